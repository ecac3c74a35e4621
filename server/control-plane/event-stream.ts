/**
 * `GET /v1/events`: server-sent events for views. The first event is a snapshot (the
 * intercepts and upstreams the token may see); then live events follow, filtered to the
 * token's tenants and optionally to one intercept (`?intercept=`) or holder (`?holder=`).
 * `?history=1` replays recent requests first: the one intercept's, or those of every intercept in
 * the snapshot (a dashboard opened on a busy intercept shows its traffic, not zeros).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Principal } from '../auth/auth.js';
import type { EventBus, ServerEvent } from '../observability/event-bus.js';

const KEEPALIVE_MS = 15_000;
const MAX_UNSENT = 1 << 20;

export interface EventStreamSource {
  bus: EventBus;
  snapshot: (principal: Principal) => {
    intercepts: { id: string; tenant: string; holder: string }[];
    upstreams: unknown[];
  };
  upstreamsEveryMs: number;
  upstreams: (principal: Principal) => ServerEvent;
  /** The stream's token as the shared set has it now; undefined once removed (TokenAuthority.successor). */
  successor: (principal: Principal) => Principal | undefined;
}

export function serveEvents(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  opened: Principal,
  source: EventStreamSource,
): void {
  let principal = opened;
  const interceptId = url.searchParams.get('intercept') ?? undefined;
  const holder = url.searchParams.get('holder') ?? undefined;
  const wants = (event: ServerEvent): boolean => {
    if (event.type === 'upstreams') return true;
    const tenant = event.type === 'request' ? event.tenant : event.intercept.tenant;
    if (!principal.canUseTenant(tenant)) return false;
    const id = event.type === 'request' ? event.interceptId : event.intercept.id;
    const eventHolder = event.type === 'request' ? event.holder : event.intercept.holder;
    return (!interceptId || id === interceptId) && (!holder || eventHolder === holder);
  };
  const send = (event: unknown) => {
    // A viewer that stopped reading would make the server buffer every event for it:
    // past 1 MiB unsent it is cut off (it reconnects, and gets a fresh snapshot).
    if (res.writableLength > MAX_UNSENT) res.destroy();
    else res.write(`data: ${JSON.stringify(event)}\n\n`);
  };

  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    // Reverse proxies must pass each event on as it comes, not buffer the stream.
    'x-accel-buffering': 'no',
  });
  const snapshot = source.snapshot(principal);
  const shown = snapshot.intercepts.filter(
    (i) => (!interceptId || i.id === interceptId) && (!holder || i.holder === holder),
  );
  send({ type: 'snapshot', at: Date.now(), intercepts: shown, upstreams: snapshot.upstreams });
  if (url.searchParams.get('history') === '1') {
    const ids = interceptId ? [interceptId] : shown.map((i) => i.id);
    for (const id of ids) for (const event of source.bus.recent(id)) if (wants(event)) send(event);
  }
  send({ type: 'live', at: Date.now() });

  // A token taken out of the shared set (or narrowed) stops what its stream shows, too: the
  // stream ends at its next event or tick, and the viewer's reconnect is refused.
  const tokenStillGood = (): boolean => {
    const now = source.successor(principal);
    if (now) principal = now;
    else res.end();
    return now !== undefined;
  };
  const onEvent = (event: ServerEvent) => {
    if (tokenStillGood() && wants(event)) send(event);
  };
  source.bus.on('event', onEvent);
  const keepalive = setInterval(() => {
    if (tokenStillGood()) res.write(': keepalive\n\n');
  }, KEEPALIVE_MS);
  const health = setInterval(() => {
    if (tokenStillGood()) send(source.upstreams(principal));
  }, source.upstreamsEveryMs);
  const stop = () => {
    source.bus.off('event', onEvent);
    clearInterval(keepalive);
    clearInterval(health);
  };
  req.on('close', stop);
  res.on('close', stop);
  res.on('error', stop);
}
