/**
 * What the outbound gateway reports of each call it carried (plain requests and CONNECT
 * tunnels alike): one finished call, for the live view and plain logs. Its own module, so the
 * gateway and its CONNECT handling both use it without importing each other.
 */
export interface GatewayRecord {
  startedAt: number;
  method: string;
  /** Origin form: the service named by the path. */
  service?: string;
  /** Proxy form: the host the caller addressed. */
  host?: string;
  /** Path and query sent on (credential-like query values masked). */
  path: string;
  status: number;
  durationMs: number;
  bytesOut: number;
  error?: string;
}
