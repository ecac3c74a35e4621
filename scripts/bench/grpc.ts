/**
 * gRPC for the benchmarks: a grpc-js unary service run as its own process, one call to check
 * that a target answers it, and h2load runs of that call.
 *
 *   node grpc.ts serve <port> <label>     bench.Echo/Say on 127.0.0.1:<port> (h2c); prints "ready"
 *
 * Every answer carries `x-served-by: <label>` in its initial metadata, so a check can tell
 * which of two services served it.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import type {
  CallOptions,
  ChannelCredentials,
  Client,
  ClientUnaryCall,
  Metadata,
  MetadataValue,
  ServerUnaryCall,
  ServiceDefinition,
  ServiceError,
  sendUnaryData,
} from '@grpc/grpc-js';
import { children } from './lib.ts';

const PROTO_FILE = join(import.meta.dirname, 'echo.proto');
export const GRPC_PATH = '/bench.Echo/Say';
const TEXT = 'hello from grpc';

/** bench.Msg of echo.proto. */
interface Msg {
  text: string;
}
/** A client of bench.Echo, as loadPackageDefinition makes it from echo.proto. */
interface EchoClient extends Client {
  Say(
    request: Msg,
    metadata: Metadata,
    options: CallOptions,
    callback: (err: ServiceError | null, reply?: Msg) => void,
  ): ClientUnaryCall;
}
interface EchoConstructor {
  new (address: string, credentials: ChannelCredentials): EchoClient;
  service: ServiceDefinition;
}

async function loadEcho() {
  const grpc = await import('@grpc/grpc-js');
  const loader = await import('@grpc/proto-loader');
  const def = loader.loadSync(PROTO_FILE, { keepCase: true });
  const bench = grpc.loadPackageDefinition(def).bench;
  const Echo = bench && 'Echo' in bench ? bench.Echo : undefined;
  if (typeof Echo !== 'function') throw new Error(`${PROTO_FILE} has no service bench.Echo`);
  // loadPackageDefinition types its clients' methods only as `Function`.
  return { grpc, Echo: Echo as unknown as EchoConstructor };
}

/** The request body h2load sends: one gRPC message (5-byte prefix + protobuf `Msg{text}`). */
export function writeRequestBody(dir: string) {
  const text = Buffer.from(TEXT);
  const msg = Buffer.concat([Buffer.from([0x0a, text.length]), text]);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(msg.length, 1);
  const file = join(dir, 'grpc-request.bin');
  writeFileSync(file, Buffer.concat([prefix, msg]));
  return file;
}

/** What a port answers to an HTTP/2 connection preface: its first line, or that it spoke HTTP/2. */
function prefaceAnswer(hostname: string, port: string) {
  return new Promise<string | undefined>((res) => {
    const socket = net.connect(Number(port), hostname);
    let got = Buffer.alloc(0);
    const done = (what: string | undefined) => {
      socket.destroy();
      res(what);
    };
    const timer = setTimeout(
      () => done(got.length ? got.toString('latin1').split('\r\n')[0] : 'nothing within 2 s'),
      2000,
    );
    socket.on('connect', () =>
      socket.write(
        Buffer.concat([
          Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
          Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]),
        ]),
      ),
    );
    socket.on('data', (c) => {
      got = Buffer.concat([got, c]);
      if (got.length < 9) return;
      clearTimeout(timer);
      done(got[3] === 4 ? 'HTTP/2 SETTINGS' : got.toString('latin1').split('\r\n')[0]);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      done(err.code ?? err.message);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      done(got.length ? got.toString('latin1').split('\r\n')[0] : 'connection closed');
    });
  });
}

/**
 * One unary call to `url` with `metadata`; resolves `{ ok: true }` if `expectServedBy` served
 * it, else `{ ok: false, why }` saying what the target answered.
 */
export async function checkGrpc(
  url: string,
  metadata: Record<string, string>,
  expectServedBy: string,
): Promise<{ ok: true } | { ok: false; why: string }> {
  const { grpc, Echo } = await loadEcho();
  const { hostname, port } = new URL(url);
  const client = new Echo(`${hostname}:${port}`, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.set(k, v);
  let servedBy: MetadataValue | undefined;
  try {
    await new Promise<void>((res, rej) => {
      const call = client.Say({ text: TEXT }, md, { deadline: Date.now() + 5000 }, (err, reply) =>
        err
          ? rej(err)
          : reply?.text === TEXT
            ? res()
            : rej(new Error(`echoed ${JSON.stringify(reply?.text)}`)),
      );
      call.on('metadata', (m: Metadata) => (servedBy = m.get('x-served-by')[0]));
    });
  } catch (e) {
    const err = e as Error;
    const answer = await prefaceAnswer(hostname, port);
    return {
      ok: false,
      why: `data port answered ${JSON.stringify(answer)} to HTTP/2 (grpc-js: ${err.message.replace(/\s*\(\d{4}-[^)]*\).*$/s, '')})`,
    };
  } finally {
    client.close();
  }
  if (servedBy !== expectServedBy)
    return { ok: false, why: `served by ${JSON.stringify(servedBy)}, not ${JSON.stringify(expectServedBy)}` };
  return { ok: true };
}

/**
 * One h2load run of the unary call (one thread, `clients` connections with `streams` calls in
 * flight on each) for `seconds` after `warmup` seconds. h2load counts an answer with HTTP
 * status 2xx as a success; it does not read `grpc-status`, which checkGrpc does beforehand.
 */
export function h2load(
  url: string,
  {
    clients,
    streams,
    seconds,
    warmup,
    bodyFile,
    headers = {},
  }: {
    clients: number;
    streams: number;
    seconds: number;
    warmup: number;
    bodyFile: string;
    headers?: Record<string, string> | undefined;
  },
) {
  const args = [
    '-t1',
    `-c${clients}`,
    `-m${streams}`,
    '-D',
    String(seconds),
    '--warm-up-time',
    String(warmup),
  ];
  args.push('-d', bodyFile, '-H', 'content-type: application/grpc', '-H', 'te: trailers');
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  args.push(`${url}${GRPC_PATH}`);
  return new Promise<{ rps: number; calls: number }>((res, rej) => {
    const child = spawn('h2load', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const proc = { name: 'h2load', child, pid: child.pid, output: () => out };
    children.add(proc);
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (out += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), (seconds + warmup + 30) * 1000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      children.delete(proc);
      const rps = Number(/finished in [\d.]+\w*, ([\d.]+) req\/s/.exec(out)?.[1]);
      const m =
        /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(
          out,
        );
      if (code !== 0 || !Number.isFinite(rps) || !m)
        return rej(new Error(`h2load ${args.join(' ')} failed (${code}):\n${out}`));
      const [done, succeeded, failed, errored] = [m[3], m[4], m[5], m[6]].map(Number) as [
        number,
        number,
        number,
        number,
      ];
      if (succeeded === 0 || failed + errored > 0)
        return rej(new Error(`h2load: ${succeeded} of ${done} calls succeeded from ${url}:\n${out}`));
      res({ rps, calls: succeeded });
    });
  });
}

if (process.argv[2] === 'serve') {
  const [, , , portArg, label = 'grpc'] = process.argv;
  const { grpc, Echo } = await loadEcho();
  const server = new grpc.Server();
  server.addService(Echo.service, {
    Say(call: ServerUnaryCall<Msg, Msg>, callback: sendUnaryData<Msg>) {
      const md = new grpc.Metadata();
      md.set('x-served-by', label);
      call.sendMetadata(md);
      callback(null, { text: call.request.text });
    },
  });
  server.bindAsync(`127.0.0.1:${portArg}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) {
      console.error(err.message);
      process.exit(1);
    }
    console.log('ready');
  });
}
