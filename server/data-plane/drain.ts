/**
 * A graceful stop (SIGTERM): the replica leaves rotation (/healthz answers 503 "draining"),
 * its tunnel clients open tunnels on another replica and move over, requests already in
 * flight finish, and only then does the process close, or when the drain timeout is up.
 *
 * In order:
 * 1. Draining starts: /healthz says 503, new tunnels are refused (their clients retry through
 *    the load balancer and land elsewhere), every tunnel client is told to move.
 * 2. While clients move, the data port still takes requests: other replicas relay a moving
 *    client's traffic here until they hear it has moved, and a refused relay would be a 502.
 *    This ends when every tunnel has closed, when no other replica is alive (there is nowhere
 *    to move to; a replica started a moment ago counts once a heartbeat has read it), and at
 *    the latest at half the drain timeout.
 * 3. The data port stops accepting connections. Requests in flight on either port finish;
 *    each answer from now on closes its connection, and idle connections are closed.
 */
import type http from 'node:http';
import type { Logger } from 'pino';
import type { OutboundResponse } from '../../src/shared/http/http-types.js';
import type { TunnelHub } from '../tunnel/tunnel-hub.js';

/**
 * The control port's event streams are long-lived by design: one would hold the drain to its
 * timeout, so they are cut at the end instead.
 */
const EVENT_STREAM_PATH = '/v1/events';
const POLL_MS = 100;

export interface DrainOptions {
  control: http.Server;
  data: http.Server;
  /**
   * The data port's requests in flight, kept by the data plane with the listener it has on
   * every response anyway: a second listener per request here cost about a tenth of the
   * data port's throughput.
   */
  dataInFlight: InFlight;
  hub: TunnelHub;
  /** The HTTP/2 connections of the data port and the control port: told to go away (GOAWAY) once the data port closes. */
  http2?: { closeIdle(): void }[];
  /** Whether another replica is alive to take the tunnels over. */
  peersAlive: () => boolean;
  /**
   * How long a replica started just before the signal may not be known yet (the store's
   * heartbeat reads peers this often; 0 without replicas). Giving up on moves before then
   * would close the data port while that replica still relays here.
   */
  peerDiscoveryMs: number;
  log: Logger;
}

/** Responses not yet closed; `closing` says to close each connection after its answer. */
export interface InFlight {
  readonly responses: ReadonlySet<OutboundResponse>;
  closing: boolean;
}

export interface DrainResult {
  /** Requests still unfinished when the timeout ran out (they are cut by the close). */
  unfinished: number;
  /** Tunnels that had not moved by then. */
  tunnelsLeft: number;
  ms: number;
}

/** Unref'd: after a second signal's close() nothing here may keep the process alive. */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());

export class Drain {
  private readonly inFlight = new Set<http.ServerResponse>();
  private started = false;

  constructor(private readonly opts: DrainOptions) {
    // Ahead of the servers' own handlers, so an answer written at once already closes its connection.
    opts.control.prependListener('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (!req.url?.startsWith(EVENT_STREAM_PATH)) this.track(res);
    });
  }

  get draining(): boolean {
    return this.started;
  }

  async drain(timeoutMs: number): Promise<DrainResult> {
    const { control, data, hub, log } = this.opts;
    const start = Date.now();
    const deadline = start + timeoutMs;
    this.started = true;
    this.opts.dataInFlight.closing = true;
    for (const res of [...this.inFlight, ...this.opts.dataInFlight.responses]) closeAfter(res);
    const tunnels = hub.list().length;
    hub.drain();
    log.info(
      { inFlight: this.inFlight.size, tunnels, drainTimeoutSeconds: timeoutMs / 1000 },
      'draining: /healthz answers 503, tunnel clients are moving to another replica, requests in flight finish',
    );

    const movesUntil = start + timeoutMs / 2;
    const peersKnownAt = start + this.opts.peerDiscoveryMs;
    const mayMove = () => Date.now() < peersKnownAt || this.opts.peersAlive();
    while (hub.list().length > 0 && mayMove() && Date.now() < movesUntil) await sleep(POLL_MS);
    data.close();
    // An HTTP/2 connection has no Connection: close; GOAWAY lets its streams finish and takes no new ones.
    for (const h2 of this.opts.http2 ?? []) h2.closeIdle();
    const inFlight = () => this.inFlight.size + this.opts.dataInFlight.responses.size;
    while (inFlight() > 0 && Date.now() < deadline) {
      // Connections become idle as their last answers finish; nothing else will close them.
      data.closeIdleConnections();
      control.closeIdleConnections();
      await sleep(POLL_MS);
    }
    const result = { unfinished: inFlight(), tunnelsLeft: hub.list().length, ms: Date.now() - start };
    if (result.unfinished > 0) log.warn(result, 'drain timeout reached: requests still in flight are cut');
    else log.info(result, 'drained');
    return result;
  }

  private track(res: http.ServerResponse): void {
    this.inFlight.add(res);
    res.once('close', () => this.inFlight.delete(res));
    if (this.started) closeAfter(res);
  }
}

/** The client reconnects for its next request, elsewhere. */
export function closeAfter(res: OutboundResponse): void {
  if (!res.headersSent && !('stream' in res)) res.setHeader('connection', 'close');
}
