/**
 * The tunnel's two ends without the agents: a real WebSocket pair on loopback with a
 * TunnelMux on each, the server agent's end opening streams and the client agent's end
 * answering them (as server/tunnel/tunnel-hub.ts and src/client/tunnel/tunnel-client.ts use them).
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { TunnelMux, type TunnelStream } from '../../src/shared/tunnel-mux.js';
import type { OpenHead } from '../../src/shared/tunnel-wire.js';
import type { Cleanup } from './helpers.js';

export interface TunnelPair {
  /** The server agent's end: opens streams. */
  hub: TunnelMux;
  /** The client agent's end. */
  agent: TunnelMux;
  hubWs: WebSocket;
  agentWs: WebSocket;
  /** Protocol errors either end saw (there should be none unless a test sends garbage). */
  errors: Error[];
  /** Text messages each end received. */
  hubTexts: string[];
  agentTexts: string[];
}

export async function tunnelPair(
  onOpen: (stream: TunnelStream, head: OpenHead) => void,
  cleanups: Cleanup[],
): Promise<TunnelPair> {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    perMessageDeflate: false,
    maxPayload: 8 << 20,
  });
  await once(wss, 'listening');
  const accepted = once(wss, 'connection') as Promise<[WebSocket]>;
  const agentWs = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}`, {
    perMessageDeflate: false,
    maxPayload: 8 << 20,
  });
  await once(agentWs, 'open');
  const [hubWs] = await accepted;
  const errors: Error[] = [];
  const hubTexts: string[] = [];
  const agentTexts: string[] = [];
  const hub = new TunnelMux(
    hubWs,
    {
      onControl: (t) => hubTexts.push(t),
      onProtocolError: (e) => errors.push(e),
    },
    false,
  );
  const agent = new TunnelMux(
    agentWs,
    {
      onControl: (t) => agentTexts.push(t),
      onProtocolError: (e) => errors.push(e),
      onOpen,
    },
    true,
  );
  cleanups.push(() => {
    agentWs.terminate();
    hubWs.terminate();
    return new Promise((r) => wss.close(r));
  });
  return { hub, agent, hubWs, agentWs, errors, hubTexts, agentTexts };
}

/** A request head for tests: a plain HTTP/1 request to an intercept. */
export function requestHead(over: Partial<OpenHead> = {}): OpenHead {
  return {
    kind: 'http',
    method: 'GET',
    path: '/x',
    authority: 'billing',
    headers: [],
    intercept: 'icp_test',
    http2: false,
    upgrade: false,
    body: false,
    ...over,
  };
}

/** Sends a request on `hub` and collects the whole response. */
export function exchange(
  hub: TunnelMux,
  head: OpenHead,
  body?: Buffer,
): Promise<{ status: number; headers: string[]; body: Buffer; trailers?: string[] }> {
  return new Promise((resolve, reject) => {
    const stream = hub.open(head);
    let status = 0;
    let headers: string[] = [];
    const chunks: Buffer[] = [];
    stream.onHead = (h) => {
      status = h.status;
      headers = h.headers;
    };
    stream.onData = (c) => {
      chunks.push(Buffer.from(c));
      stream.consumed(c.length);
    };
    stream.onEnd = (trailers) => resolve({ status, headers, body: Buffer.concat(chunks), trailers });
    stream.onReset = (r) => reject(new Error(`stream reset: ${r.code} ${r.message ?? ''}`));
    if (head.body) {
      if (body) stream.write(body);
      stream.end();
    }
  });
}
