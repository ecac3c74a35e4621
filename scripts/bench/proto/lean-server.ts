/**
 * Prototype, server side: the smallest HTTP-aware tunnel Node can run (issue 15, the ceiling of
 * the product's design). Not product code: it exists to show how fast a tunnel made of
 * `node:http` on the data port, one `ws` WebSocket and undici on the client side (lean-client.ts)
 * can be on this machine, with nothing of the product's own work — no routing, schema checks,
 * flow control, request log, metrics or timeouts.
 *
 *   node lean-server.ts <tunnelPort> <dataPort>
 *
 * Frames are one binary message each: 1 byte type, 4 bytes stream id, payload. Open and Head
 * carry JSON. Prints "ready" once both ports listen on 127.0.0.1.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';

const [tunnelPort, dataPort] = process.argv.slice(2).map(Number);
const OPEN = 1;
const HEAD = 2;
const DATA = 3;
const END = 4;
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'proxy-connection']);

/** What a Head frame carries (lean-client.ts). */
interface Head {
  status: number;
  headers: string[];
}

function frame(type: number, id: number, payload?: string | Buffer) {
  const body = typeof payload === 'string' ? Buffer.from(payload) : (payload ?? Buffer.alloc(0));
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type;
  out.writeUInt32BE(id, 1);
  body.copy(out, 5);
  return out;
}

/** `raw` is name, value pairs (rawHeaders): both of a pair are set. */
function withoutHop(raw: string[]) {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2)
    if (!HOP.has((raw[i] as string).toLowerCase())) out.push(raw[i] as string, raw[i + 1] as string);
  return out;
}

let tunnel: WebSocket | undefined;
const pending = new Map<number, http.ServerResponse>();
let nextId = 1;

const wss = new WebSocketServer({ host: '127.0.0.1', port: tunnelPort, perMessageDeflate: false });
wss.on('connection', (ws) => {
  // ws keeps its net.Socket in `_socket`, which its types leave out.
  (ws as WebSocket & { _socket: Socket })._socket.setNoDelay(true);
  tunnel = ws;
  ws.on('message', (raw) => {
    // binaryType is 'nodebuffer' (the default): each message is one Buffer.
    const msg = raw as Buffer;
    const id = msg.readUInt32BE(1);
    const res = pending.get(id);
    if (!res) return;
    const payload = msg.subarray(5);
    if (msg[0] === HEAD) {
      const head = JSON.parse(payload.toString()) as Head;
      res.writeHead(head.status, head.headers);
    } else if (msg[0] === DATA) res.write(payload);
    else if (msg[0] === END) {
      pending.delete(id);
      res.end();
    }
  });
  ws.on('close', () => {
    if (tunnel === ws) tunnel = undefined;
  });
});

/** Sends on the current tunnel: one that closed while a request was being sent is an error. */
function sendOnTunnel(message: Buffer) {
  if (!tunnel) throw new Error('the tunnel closed while a request was being sent');
  tunnel.send(message);
}

const data = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  if (!tunnel) return res.writeHead(502).end('no tunnel\n');
  const id = nextId++;
  pending.set(id, res);
  const body = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  tunnel.send(
    frame(
      OPEN,
      id,
      JSON.stringify({ method: req.method, path: req.url, headers: withoutHop(req.rawHeaders), body }),
    ),
  );
  if (!body) return req.resume();
  req.on('data', (chunk: Buffer) => sendOnTunnel(frame(DATA, id, chunk)));
  req.on('end', () => sendOnTunnel(frame(END, id)));
});

let listening = 0;
const up = () => {
  if (++listening === 2) console.log('ready');
};
wss.on('listening', up);
data.listen(dataPort, '127.0.0.1', up);
