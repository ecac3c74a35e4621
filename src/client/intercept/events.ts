/**
 * The client's event stream: everything a view (the live log, NDJSON output, the detached
 * agent's log file) shows about an intercept. Views subscribe to these events; none of them
 * reach into HTTP, tunnel or lease state directly, so new kinds (Kafka messages) only add
 * members here.
 */
import type { EndReason } from './end-reason.js';

/** The tunnel as views show it. */
export type TunnelState = 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** A tunnelled request has arrived and is being served by the local service. */
export interface HttpStartEvent {
  kind: 'http-start';
  requestId: string;
  interceptId: string;
  startedAt: number;
  method: string;
  path: string;
  /** Set for an Upgrade request: while it is open the views show it as an open WebSocket. */
  upgrade?: 'websocket' | 'upgrade';
}

/** A tunnelled request has been answered (or failed). Header values are already masked. */
export interface RequestEvent {
  kind: 'http';
  requestId: string;
  interceptId: string;
  startedAt: number;
  method: string;
  path: string;
  status: number;
  durationMs: number;
  /** Time until the local service sent response headers. */
  headersMs?: number;
  bytesIn: number;
  bytesOut: number;
  error?: string;
  /** Only when a view shows them (the live view's details, --json): masking costs per request. */
  requestHeaders?: Record<string, string>;
  responseHeaders?: Record<string, string>;
}

/**
 * An upgraded connection (a WebSocket) through the tunnel has closed: one event for its
 * whole life, after the http-start of its request.
 */
export interface WebSocketEvent {
  kind: 'websocket';
  requestId: string;
  interceptId: string;
  startedAt: number;
  path: string;
  /** websocket, or upgrade for another protocol (its frames are not followed). */
  protocol: 'websocket' | 'upgrade';
  /** 101 when it was upgraded; the local service's answer when it refused; 0 when it was not reached. */
  status: number;
  durationMs: number;
  /** Bytes from the caller, and from the local service. */
  bytesIn: number;
  bytesOut: number;
  messagesIn?: number;
  messagesOut?: number;
  /** Whose end went first; `leave`: closed by leaving the intercept. */
  closedBy?: 'caller' | 'local' | 'leave';
  /** The first close frame (WebSocket), and which side sent it. */
  closeFrom?: 'caller' | 'local';
  code?: number;
  reason?: string;
  error?: string;
}

export interface TunnelEvent {
  kind: 'tunnel';
  state: TunnelState;
  retryInMs?: number;
  error?: string;
  at: number;
}

/** The server confirmed the lease until `expiresAt`. */
export interface LeaseEvent {
  kind: 'lease';
  interceptId: string;
  expiresAt: number;
  at: number;
}

/**
 * The lease lapsed while the client could not renew it (asleep, stopped, cut off) and the
 * intercept is back: since `lapsedAt` the tenant's traffic went to the fallback instead.
 */
export interface LeaseLapsedEvent {
  kind: 'lease-lapsed';
  interceptId: string;
  /** Set when it came back under another id (someone held the tenant meanwhile, or the server forgot the id). */
  previousId?: string;
  lapsedAt: number;
  /** Where the traffic went, as the server says (undefined: a server that does not say). */
  fallback?: 'base' | 'route';
  fallbackMs: number;
  at: number;
}

export interface EndedEvent {
  kind: 'ended';
  /** As a sentence (`describeEnd(end)`). */
  reason: string;
  end: EndReason;
  at: number;
}

/** A Kafka message delivered to the local broker (in) or forwarded back to dev (out). */
export interface KafkaEvent {
  kind: 'kafka';
  direction: 'in' | 'out';
  from: string;
  to: string;
  key?: string;
  bytes: number;
  at: number;
  error?: string;
}

/** A call the local service made through the outbound gateway into the dev environment. */
export interface OutboundEvent {
  kind: 'outbound';
  startedAt: number;
  method: string;
  /** The service (`/inventory/items`) or host (proxy form) it addressed. */
  target: string;
  path: string;
  status: number;
  durationMs: number;
  bytesOut: number;
  error?: string;
}

export type SessionEvent =
  | HttpStartEvent
  | RequestEvent
  | WebSocketEvent
  | TunnelEvent
  | LeaseEvent
  | LeaseLapsedEvent
  | EndedEvent
  | KafkaEvent
  | OutboundEvent;
