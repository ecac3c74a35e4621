/**
 * Every answer Kelsingra makes itself carries one of these codes (the `code` of the JSON
 * envelope and the `x-kelsingra-error` header), and scripts branch on them: one table, so a
 * code is added here or nowhere, and the compiler holds every producer and every reader to it.
 * `status` is the HTTP status the code is answered with (to gRPC callers: its gRPC status).
 */
export const ERROR_CODES = {
  // The caller's request.
  'bad-request': { status: 400, meaning: 'the request body or a parameter is not what the API takes' },
  'bad-path': { status: 400, meaning: 'a path whose ".." segments climb above the root, or no path at all' },
  'bad-routing-key': {
    status: 400,
    meaning: 'the routing key (tenant header, baggage entry, host) is not one key',
  },
  'ambiguous-header': {
    status: 400,
    meaning: 'two spellings of one guarded header (x_tenant_id beside x-tenant-id)',
  },
  'malformed-request': { status: 400, meaning: 'the HTTP parser refused the request' },
  'headers-too-large': { status: 431, meaning: 'request headers over the parser limit' },
  'chunk-extensions-too-large': { status: 413, meaning: 'chunk extensions over the parser limit' },
  'body-too-large': { status: 413, meaning: 'a request body over --max-body-bytes (or the API limit)' },
  'body-timeout': { status: 408, meaning: 'the request body paused longer than --body-idle-timeout' },
  'request-timeout': { status: 408, meaning: 'the request did not arrive in time' },
  'https-required': { status: 400, meaning: 'plain HTTP on a port that speaks TLS' },
  'no-routing-key': { status: 400, meaning: 'a gateway call without a routing key' },
  'no-target': { status: 400, meaning: 'a gateway call that names no dev host' },
  'unknown-topic': { status: 400, meaning: 'a Kafka topic the server agent does not split' },
  'loop-detected': {
    status: 508,
    meaning: 'the request already passed through Kelsingra (reverse-proxy rule)',
  },
  // Who may do what.
  unauthorized: { status: 401, meaning: 'no token, or a wrong one' },
  'too-many-auth-failures': { status: 429, meaning: 'too many wrong tokens from one address' },
  'tenant-forbidden': { status: 403, meaning: 'the token is limited to other tenants' },
  'intercept-forbidden': {
    status: 403,
    meaning: 'the intercept belongs to someone the token may not act for',
  },
  'tunnel-forbidden': { status: 403, meaning: 'the tunnel belongs to another token' },
  'provider-forbidden': {
    status: 403,
    meaning: 'the Traefik provider endpoint needs a token that sees every tenant',
  },
  'route-target-forbidden': {
    status: 403,
    meaning: 'a tenant route to a target the server agent does not allow',
  },
  'topic-forbidden': { status: 403, meaning: 'a Kafka topic the token may not bridge' },
  'foreign-host': {
    status: 421,
    meaning: 'the outbound gateway was called with another Host (DNS rebinding)',
  },
  'origin-refused': { status: 403, meaning: 'the outbound gateway refuses a web page of another origin' },
  'cross-site-refused': { status: 403, meaning: 'a cross-site browser request to the outbound gateway' },
  // What the API looks up.
  'not-found': { status: 404, meaning: 'no such API path' },
  'unknown-service': { status: 404, meaning: 'no service matches the host or path' },
  'unknown-intercept': { status: 404, meaning: 'no such intercept (ended, or never made)' },
  'unknown-route': { status: 404, meaning: 'no such tenant route' },
  'kafka-disabled': { status: 404, meaning: 'the server agent has no kafka: section' },
  conflict: { status: 409, meaning: 'someone else already intercepts this service for this tenant' },
  'no-tunnel': { status: 409, meaning: 'an intercept asked for without a connected tunnel' },
  'no-gateway': { status: 409, meaning: 'the client agent runs without its outbound gateway' },
  'tunnel-version': { status: 426, meaning: 'client and server speak different tunnel protocols' },
  'too-many-tunnels': { status: 429, meaning: 'the token holds --max-tunnels-per-token tunnels already' },
  'tenant-concurrency': { status: 429, meaning: 'the tenant has --tenant-concurrency requests in flight' },
  // Where the request was going.
  'upstream-unreachable': { status: 502, meaning: "could not reach the service's upstream" },
  'upstream-timeout': { status: 504, meaning: "the service's upstream did not answer in time" },
  'route-unreachable': { status: 502, meaning: "could not reach the tenant route's target" },
  'route-timeout': { status: 504, meaning: "the tenant route's target did not answer in time" },
  'replica-unreachable': { status: 502, meaning: 'could not reach the replica holding the tunnel' },
  'replica-timeout': { status: 504, meaning: 'the replica holding the tunnel did not answer in time' },
  'replica-down': { status: 502, meaning: 'the replica holding the tunnel stopped answering' },
  'relay-misdirected': {
    status: 508,
    meaning: 'a relay reached a replica that is not the one meant (--advertise-url)',
  },
  'no-healthy-backend': { status: 503, meaning: 'every backend of the pool is ejected' },
  'tunnel-disconnected': {
    status: 502,
    meaning: "the developer's tunnel is down (until it reconnects or the lease ends)",
  },
  'tunnel-unavailable': { status: 502, meaning: 'the tunnel could not take the request' },
  'tunnel-reset': { status: 502, meaning: 'the tunnel stream was reset before a response' },
  'tunnel-refused': { status: 502, meaning: 'the client agent refused the stream' },
  'tunnel-streams-exhausted': {
    status: 503,
    meaning: 'the tunnel carries --max-tunnel-streams requests already',
  },
  'local-unreachable': { status: 502, meaning: "could not reach the developer's local service" },
  'local-timeout': { status: 504, meaning: "the developer's local service did not answer in time" },
  'upgrade-not-supported': { status: 501, meaning: 'an Upgrade the path cannot carry' },
  'connect-not-supported': { status: 501, meaning: 'CONNECT to the outbound gateway' },
  'server-unreachable': { status: 502, meaning: 'the outbound gateway could not reach the server agent' },
  'server-timeout': { status: 504, meaning: 'the server agent did not answer in time' },
  'gateway-unconfirmed': {
    status: 503,
    meaning: 'the dev gateway did not confirm the rule (gateway sync), so the intercept was not made',
  },
  'store-unavailable': { status: 503, meaning: 'the store (PostgreSQL) did not answer' },
  internal: { status: 500, meaning: 'a bug in Kelsingra: the log has it' },
} as const satisfies Record<string, { status: number; meaning: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** The JSON body of every answer Kelsingra makes itself (server agent, client agent, gateway). */
export function errorEnvelope(code: ErrorCode, message: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ error: `Kelsingra: ${message}`, code, source: 'kelsingra', ...extra });
}

/**
 * A failure that is the caller's answer: thrown deep in a handler, answered by the one catch
 * around the API with its status, code and message (anything else there is a 500 and a bug).
 */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }
}
