/**
 * Prototype, client side of lean-server.ts (see there): one WebSocket to the server side, each
 * stream forwarded to the local HTTP/1.1 service with an undici Pool, as the product's client
 * agent does, and nothing else.
 *
 *   node lean-client.ts <tunnelUrl> <localPort>
 *
 * Prints "ready" once the tunnel is up.
 */
import type { Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { Pool } from 'undici';
import WebSocket from 'ws';

const [tunnelUrl, localPort] = process.argv.slice(2);
if (!tunnelUrl) throw new Error('usage: lean-client.ts <tunnelUrl> <localPort>');
const OPEN = 1;
const HEAD = 2;
const DATA = 3;
const END = 4;
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'proxy-connection']);

const pool = new Pool(`http://127.0.0.1:${localPort}`, { connections: null, pipelining: 1 });
const bodies = new Map<number, PassThrough>();

/** What an Open frame carries (lean-server.ts). */
interface OpenHead {
  method: string;
  path: string;
  headers: string[];
  body: boolean;
}

function frame(type: number, id: number, payload?: string | Buffer) {
  const body = typeof payload === 'string' ? Buffer.from(payload) : (payload ?? Buffer.alloc(0));
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type;
  out.writeUInt32BE(id, 1);
  body.copy(out, 5);
  return out;
}

const ws = new WebSocket(tunnelUrl, { perMessageDeflate: false });
ws.on('open', () => {
  // ws keeps its net.Socket in `_socket`, which its types leave out.
  (ws as WebSocket & { _socket: Socket })._socket.setNoDelay(true);
  console.log('ready');
});
ws.on('error', (err) => {
  console.error(`tunnel: ${err.message}`);
  process.exit(1);
});
ws.on('close', () => {
  console.error('tunnel closed');
  process.exit(1);
});
ws.on('message', (raw) => {
  // binaryType is 'nodebuffer' (the default): each message is one Buffer.
  const msg = raw as Buffer;
  const id = msg.readUInt32BE(1);
  const payload = msg.subarray(5);
  if (msg[0] === DATA) return bodies.get(id)?.write(payload);
  if (msg[0] === END) {
    bodies.get(id)?.end();
    return bodies.delete(id);
  }
  if (msg[0] !== OPEN) return;
  const head = JSON.parse(payload.toString()) as OpenHead;
  const body = head.body ? new PassThrough() : null;
  if (body) bodies.set(id, body);
  pool
    .request({ method: head.method, path: head.path, headers: head.headers, body })
    .then(({ statusCode, headers, body: rb }) => {
      const out: (string | undefined)[] = [];
      for (const [k, v] of Object.entries(headers))
        if (!HOP.has(k)) for (const one of Array.isArray(v) ? v : [v]) out.push(k, one);
      ws.send(frame(HEAD, id, JSON.stringify({ status: statusCode, headers: out })));
      rb.on('data', (chunk: Buffer) => ws.send(frame(DATA, id, chunk)));
      rb.on('end', () => ws.send(frame(END, id)));
    })
    .catch((err: Error) => {
      ws.send(frame(HEAD, id, JSON.stringify({ status: 502, headers: ['content-type', 'text/plain'] })));
      ws.send(frame(DATA, id, `local service: ${err.message}\n`));
      ws.send(frame(END, id));
    });
});
