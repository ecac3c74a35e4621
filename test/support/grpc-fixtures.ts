/**
 * A real gRPC service for the tests (grpc-js, test/fixtures/echo.proto): unary, server-,
 * client- and bidi-streaming echo methods that report the metadata they saw and who served
 * them, and promise-returning client calls. Shared by every test that sends gRPC through
 * Kelsingra (pass-through, routes, the gateway, intercepts).
 */
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ROOT } from './helpers.js';

export const ECHO_PROTO = join(ROOT, 'test', 'fixtures', 'echo.proto');

export interface EchoRequest {
  message?: string;
  count?: number;
  delayMs?: number;
  /** Answer with this gRPC status code instead of a reply. */
  failWith?: number;
}

export interface EchoReply {
  message: string;
  servedBy: string;
  index: number;
  metadata: Record<string, string>;
}

type EchoClientCtor = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ChannelOptions,
) => grpc.Client & Record<string, (...args: unknown[]) => unknown>;

function loadEcho(): { Echo: EchoClientCtor & { service: grpc.ServiceDefinition } } {
  const definition = protoLoader.loadSync(ECHO_PROTO, { keepCase: false, defaults: true });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as {
    kelsingra: { test: { Echo: EchoClientCtor & { service: grpc.ServiceDefinition } } };
  };
  return pkg.kelsingra.test;
}

const echo = loadEcho();

/** What one echo server saw. */
export interface EchoServer {
  name: string;
  port: number;
  /** `127.0.0.1:<port>`, for a client that dials the server directly. */
  address: string;
  /** `http://127.0.0.1:<port>`, for a Kelsingra service or route upstream. */
  url: string;
  /** Every call's method (`Unary`, `Bidi`…), in arrival order. */
  calls: string[];
  /** Calls whose caller cancelled them (a deadline, a reset), by method. */
  cancelled: string[];
  close(): Promise<void>;
}

function metadataObject(md: grpc.Metadata): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(md.getMap())) out[k] = typeof v === 'string' ? v : v.toString('base64');
  return out;
}

function statusError(code: number, message: string): grpc.ServiceError {
  return Object.assign(new Error(message), { code, details: message, metadata: new grpc.Metadata() });
}

/** Starts a grpc-js echo server on a free port of 127.0.0.1 (plain h2c). */
export async function startEchoServer(name = 'echo'): Promise<EchoServer> {
  const server = new grpc.Server();
  const calls: string[] = [];
  const cancelled: string[] = [];
  const watch = (method: string, call: { on(e: 'cancelled', l: () => void): unknown }) => {
    calls.push(method);
    call.on('cancelled', () => cancelled.push(method));
  };
  const trailer = () => {
    const md = new grpc.Metadata();
    md.set('x-served-by', name);
    return md;
  };
  const reply = (message: string, index: number, md: grpc.Metadata): EchoReply => ({
    message,
    servedBy: name,
    index,
    metadata: metadataObject(md),
  });
  const later = (ms: number, fn: () => void) => (ms > 0 ? setTimeout(fn, ms) : fn());
  server.addService(echo.Echo.service, {
    Unary(call: grpc.ServerUnaryCall<EchoRequest, EchoReply>, cb: grpc.sendUnaryData<EchoReply>) {
      watch('Unary', call);
      const r = call.request;
      later(r.delayMs ?? 0, () => {
        if (call.cancelled) return;
        if (r.failWith) cb(statusError(r.failWith, `echo ${name} failed as asked`), null, trailer());
        else cb(null, reply(r.message ?? '', 0, call.metadata), trailer());
      });
    },
    ServerStream(call: grpc.ServerWritableStream<EchoRequest, EchoReply>) {
      watch('ServerStream', call);
      const r = call.request;
      let i = 0;
      const next = () => {
        if (call.cancelled) return;
        if (i >= (r.count ?? 0)) {
          call.end(trailer());
          return;
        }
        call.write(reply(`${r.message}#${i}`, i, call.metadata));
        i++;
        later(r.delayMs ?? 0, next);
      };
      next();
    },
    ClientStream(call: grpc.ServerReadableStream<EchoRequest, EchoReply>, cb: grpc.sendUnaryData<EchoReply>) {
      watch('ClientStream', call);
      const parts: string[] = [];
      call.on('data', (r: EchoRequest) => parts.push(r.message ?? ''));
      call.on('end', () => cb(null, reply(parts.join(','), parts.length, call.metadata), trailer()));
    },
    Bidi(call: grpc.ServerDuplexStream<EchoRequest, EchoReply>) {
      watch('Bidi', call);
      let i = 0;
      call.on('data', (r: EchoRequest) => call.write(reply(`echo:${r.message}`, i++, call.metadata)));
      call.on('end', () => call.end(trailer()));
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    name,
    port,
    address: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    calls,
    cancelled,
    close: () =>
      new Promise<void>((resolve) => {
        server.forceShutdown();
        resolve();
      }),
  };
}

/** A client of the echo service. */
export interface EchoClient {
  unary(req: EchoRequest, options?: CallOptions): Promise<EchoReply>;
  serverStream(req: EchoRequest, options?: CallOptions): Promise<EchoReply[]>;
  clientStream(reqs: EchoRequest[], options?: CallOptions): Promise<EchoReply>;
  bidi(reqs: EchoRequest[], options?: CallOptions): Promise<EchoReply[]>;
  close(): void;
}

export interface CallOptions {
  /** Request metadata (the tenant header, baggage…). */
  metadata?: Record<string, string>;
  /** Milliseconds from now. */
  deadlineMs?: number;
  /** Filled with the call's trailing metadata once it ends. */
  trailers?: Record<string, string>;
}

/** A gRPC failure as the client reports it: code and details (the grpc-message). */
export type GrpcError = grpc.ServiceError;

/**
 * A plain-text (h2c) client for `address` (`host:port`). `authority` sets the :authority it
 * sends, which Kelsingra may route by (a service name, a tenant's preview host).
 */
export function echoClient(address: string, authority?: string): EchoClient {
  const client = new echo.Echo(address, grpc.credentials.createInsecure(), {
    ...(authority && { 'grpc.default_authority': authority }),
  });
  const meta = (o?: CallOptions) => {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(o?.metadata ?? {})) md.set(k, v);
    return md;
  };
  const callOptions = (o?: CallOptions): grpc.CallOptions =>
    o?.deadlineMs ? { deadline: new Date(Date.now() + o.deadlineMs) } : {};
  const onTrailers = (call: grpc.Call, o?: CallOptions) =>
    call.on('status', (s: grpc.StatusObject) => {
      if (o?.trailers) Object.assign(o.trailers, metadataObject(s.metadata));
    });
  type Fn = (...args: unknown[]) => grpc.Call;
  const method = (name: string) => (client[name] as Fn).bind(client);
  return {
    unary: (req, o) =>
      new Promise((resolve, reject) => {
        const call = method('Unary')(req, meta(o), callOptions(o), (err: Error | null, r: EchoReply) =>
          err ? reject(err) : resolve(r),
        );
        onTrailers(call, o);
      }),
    serverStream: (req, o) =>
      new Promise((resolve, reject) => {
        const out: EchoReply[] = [];
        const call = method('ServerStream')(
          req,
          meta(o),
          callOptions(o),
        ) as grpc.ClientReadableStream<EchoReply>;
        onTrailers(call, o);
        call.on('data', (r: EchoReply) => out.push(r));
        call.on('error', reject);
        call.on('end', () => resolve(out));
      }),
    clientStream: (reqs, o) =>
      new Promise((resolve, reject) => {
        const call = method('ClientStream')(meta(o), callOptions(o), (err: Error | null, r: EchoReply) =>
          err ? reject(err) : resolve(r),
        ) as grpc.ClientWritableStream<EchoRequest>;
        onTrailers(call, o);
        for (const r of reqs) call.write(r);
        call.end();
      }),
    bidi: (reqs, o) =>
      new Promise((resolve, reject) => {
        const out: EchoReply[] = [];
        const call = method('Bidi')(meta(o), callOptions(o)) as grpc.ClientDuplexStream<
          EchoRequest,
          EchoReply
        >;
        onTrailers(call, o);
        // One at a time: each reply comes back before the next request goes, so the stream
        // is really carried both ways at once rather than buffered to the end.
        let i = 0;
        const next = () => {
          if (i < reqs.length) call.write(reqs[i++] as EchoRequest);
          else call.end();
        };
        call.on('data', (r: EchoReply) => {
          out.push(r);
          next();
        });
        call.on('error', reject);
        call.on('end', () => resolve(out));
        next();
      }),
    close: () => client.close(),
  };
}

export { grpc };
export const GrpcStatus = grpc.status;
