/**
 * Names shared by the server agent and the client agent. The wire protocol itself is
 * described in docs/protocol.md; keep the two in step.
 */

/** WebSocket path of the tunnel on the control port. */
export const TUNNEL_PATH = '/v1/tunnel';
/** Subprotocol offered by clients; lets a future protocol change be refused cleanly. */
export const TUNNEL_SUBPROTOCOL = 'kelsingra.h2.v1';

/** Set on every request Kelsingra forwards, so reverse-proxy rules can skip it and loops are caught. */
export const HOP_HEADER = 'x-kelsingra-hop';
/** Lets a caller name the service explicitly instead of relying on Host or path. */
export const SERVICE_HEADER = 'x-kelsingra-service';
/** Added to tunnelled requests so the local service (and the log) can tell which intercept served it. */
export const INTERCEPT_HEADER = 'x-kelsingra-intercept';
/** Marks responses that Kelsingra generated itself rather than relayed. */
export const ERROR_HEADER = 'x-kelsingra-error';

/**
 * On a request one replica relays to the replica holding the tunnel: the receiver's own
 * secret (from the replicas table), so outsiders cannot pose as a replica. Never forwarded further.
 */
export const RELAY_HEADER = 'x-kelsingra-relay';

/** Sent by the client in the WebSocket upgrade. */
export const CLIENT_ID_HEADER = 'x-kelsingra-client';
export const HOLDER_HEADER = 'x-kelsingra-holder';

/** Text frames on the tunnel WebSocket carry these JSON control messages; binary frames carry HTTP/2. */
export type ServerControl =
  | { type: 'hello'; clientId: string; heartbeatMs: number; leaseTtlMs: number }
  | { type: 'renewed'; ids: string[]; missing: string[] }
  | { type: 'intercept-ended'; id: string; reason: string };

export type ClientControl = { type: 'renew'; ids: string[] };

export interface InterceptView {
  id: string;
  service: string;
  tenant: string;
  holder: string;
  /** Names the tunnel that holds it; derived from the client id, which stays secret. */
  tunnelId: string;
  localPort: number;
  createdAt: string;
  expiresAt: string;
  connected: boolean;
  /** The server replica whose tunnel carries it ('' while disconnected). */
  replica: string;
  /** Dev topics whose messages for the tenant reach the developer (empty: HTTP only). */
  kafkaTopics: string[];
}

/** The server agent's intercept store, in `/status`: one process in memory, or replicas on PostgreSQL. */
export interface StoreHealth {
  kind: 'memory' | 'postgres';
  state: 'ok' | 'degraded';
  /** Why it is degraded, and since when. */
  error?: string;
  since?: string;
  lastSyncAt?: string;
  replicas?: { id: string; url: string; heartbeatAt: string; self: boolean; alive: boolean }[];
}

export interface UpstreamHealth {
  service: string;
  url: string;
  lastOkAt?: string;
  lastError?: string;
  lastErrorAt?: string;
}

/** A tunnelled request as the server agent saw it (for `logs` and `dashboard`). */
export interface RequestRecord {
  type: 'request';
  interceptId: string;
  service: string;
  tenant: string;
  holder: string;
  method: string;
  path: string;
  status: number;
  durationMs: number;
  bytesOut: number;
  at: number;
  error?: string;
}

/** Events on `GET /v1/events` (server-sent events, one JSON object per `data:` line). */
export type ServerEvent =
  | RequestRecord
  | { type: 'intercept'; action: 'created' | 'ended'; reason?: string; intercept: InterceptView; at: number }
  | { type: 'upstreams'; upstreams: UpstreamHealth[]; at: number };

export type StreamEvent =
  | ServerEvent
  | { type: 'snapshot'; at: number; intercepts: InterceptView[]; upstreams: UpstreamHealth[] }
  /** Marks the end of replayed history (`?history=1`): what follows is live. */
  | { type: 'live'; at: number };
