/**
 * TLS on the server agent's ports, from certificate files. A port that serves TLS still
 * answers a plain-HTTP request, once, with a JSON error saying to use https:// (a client
 * pointed at the wrong scheme otherwise sees only a reset connection). And a CA given here is
 * trusted, besides the system's, by every connection the agent makes: relays to other
 * replicas and https upstreams.
 */
import { readFile } from 'node:fs/promises';
import type http from 'node:http';
import type net from 'node:net';
import tls from 'node:tls';
import { z } from 'zod';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import type { DualProtocol } from '../../src/shared/http/dual-protocol.js';
import { writeRawError } from '../../src/shared/http/error-response.js';
import type { ClientErrorLog, PortName } from '../data-plane/client-errors.js';

export const tlsConfigSchema = z
  .object({
    /** PEM certificate chain (the server's certificate first) and its private key. */
    cert: z.string().min(1).optional(),
    key: z.string().min(1).optional(),
    /** PEM CA certificate(s) trusted besides the system's: other replicas', https upstreams'. */
    ca: z.string().min(1).optional(),
    /** Which ports serve TLS when cert and key are given. */
    ports: z
      .array(z.enum(['control', 'data']))
      .min(1, 'name control, data or both')
      .default(['control', 'data']),
  })
  .strict()
  .superRefine((t, ctx) => {
    if ((t.cert === undefined) !== (t.key === undefined))
      ctx.addIssue({
        code: 'custom',
        path: [t.cert === undefined ? 'cert' : 'key'],
        message: 'give the certificate and its key together (cert: and key:, or --tls-cert and --tls-key)',
      });
  });

export type TlsConfig = z.output<typeof tlsConfigSchema>;

/** What the ports serve with, read and checked at start-up. */
export interface TlsMaterial {
  context: tls.SecureContextOptions;
  ports: PortName[];
}

async function readPem(path: string, what: string, flag: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new KelsingraError(
      `cannot read the TLS ${what} ${path}: ${(err as Error).message}`,
      ExitCode.config,
      `check ${flag} (or tls: in the config file) and that the server agent may read the file`,
    );
  }
}

/**
 * Reads the files and checks that they make a usable server identity, so a wrong key fails
 * the start with a message instead of every handshake later. Trusts `ca` process-wide.
 */
export async function loadTls(config: TlsConfig | undefined): Promise<TlsMaterial | undefined> {
  if (!config) return undefined;
  if (config.ca) {
    const ca = await readPem(config.ca, 'CA file', '--tls-ca');
    try {
      tls.setDefaultCACertificates([...tls.getCACertificates('default'), ca]);
    } catch (err) {
      throw new KelsingraError(
        `the TLS CA file ${config.ca} holds no usable PEM certificate: ${(err as Error).message}`,
        ExitCode.config,
        'give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)',
      );
    }
  }
  if (!config.cert || !config.key) return undefined;
  const [cert, key] = await Promise.all([
    readPem(config.cert, 'certificate', '--tls-cert'),
    readPem(config.key, 'key', '--tls-key'),
  ]);
  const context: tls.SecureContextOptions = { cert, key };
  try {
    tls.createSecureContext(context);
  } catch (err) {
    throw new KelsingraError(
      `the TLS certificate ${config.cert} and key ${config.key} cannot be used: ${(err as Error).message}`,
      ExitCode.config,
      'give a PEM certificate (chain) and the private key that belongs to it, unencrypted',
    );
  }
  return { context, ports: config.ports };
}

/** The first byte of every TLS connection: a handshake record. */
const TLS_HANDSHAKE = 0x16;
/** How long a new connection may stay silent before it says whether it speaks TLS. */
const FIRST_BYTE_TIMEOUT_MS = 10_000;
/** Handshakes take a round trip or two; a client that stalls in one holds a socket for nothing. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

export interface TlsPort {
  /** Connections that have not sent their first byte yet, which the HTTP server does not know of. */
  closePending(): void;
}

/**
 * Makes a listening (or yet to listen) HTTP server serve TLS on its port. The HTTP server
 * keeps doing everything else (its timeouts, upgrades, connection tracking and closing), and
 * gets each connection once its handshake is done. Taking over the server's own
 * `connection` listener is what lets one port tell a TLS client from a plain-HTTP one.
 */
export function serveTls(
  server: http.Server,
  port: PortName,
  material: TlsMaterial,
  errors: ClientErrorLog,
  /** The port also serves HTTP/2: offered by ALPN, and chosen connections go to its server. */
  dual?: DualProtocol,
): TlsPort {
  const httpListener = dual
    ? dual.sniffer
    : (server.listeners('connection').find((l) => l.name === 'connectionListener') as
        | ((this: http.Server, socket: net.Socket) => void)
        | undefined);
  if (!httpListener) throw new Error("the HTTP server's connection listener is not where Node keeps it");
  const engine = tls.createServer(
    {
      ...material.context,
      ALPNProtocols: dual ? ['h2', 'http/1.1'] : ['http/1.1'],
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    },
    (secure) => (dual ? dual.secure(secure) : httpListener.call(server, secure)),
  );
  engine.on('tlsClientError', (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
    // A client that gives up (often right after distrusting the certificate) resets; its own
    // error says why. Everything else, such as an unknown-CA alert, is the operator's to see.
    if (err.code === 'ECONNRESET') return;
    errors.report(
      port,
      socket.remoteAddress,
      err.code ?? 'TLS_ERROR',
      `TLS handshake failed (${err.message})`,
    );
  });

  const pending = new Set<net.Socket>();
  server.removeListener('connection', httpListener);
  server.on('connection', (socket: net.Socket) => {
    pending.add(socket);
    socket.setTimeout(FIRST_BYTE_TIMEOUT_MS, () => socket.destroy());
    const failed = () => {
      pending.delete(socket);
      socket.destroy();
    };
    socket.once('error', failed);
    socket.once('close', () => pending.delete(socket));
    socket.once('data', (first: Buffer) => {
      pending.delete(socket);
      socket.setTimeout(0);
      socket.pause();
      // Put back, the handshake reads it first: TLS takes bytes already read off the socket.
      socket.unshift(first);
      socket.removeListener('error', failed);
      if (first[0] === TLS_HANDSHAKE) {
        engine.emit('connection', socket);
        return;
      }
      refusePlain(socket, port, errors);
    });
  });
  return {
    closePending() {
      for (const socket of pending) socket.destroy();
      pending.clear();
    },
  };
}

/**
 * A plain-HTTP request on a TLS port gets one answer in plain HTTP (as nginx does), so that
 * curl, a browser or the CLI shows what is wrong; then the connection closes.
 */
function refusePlain(socket: net.Socket, port: PortName, errors: ClientErrorLog): void {
  socket.on('error', () => socket.destroy());
  errors.report(port, socket.remoteAddress, 'PLAIN_HTTP_ON_TLS_PORT', 'plain HTTP (or other non-TLS bytes)');
  writeRawError(
    socket,
    400,
    'https-required',
    `this is the ${port} port of a Kelsingra server agent, and it speaks HTTPS (TLS) only; use https:// instead of http://`,
    { hint: 'use an https:// URL (kelsingra connect --server https://…, KELSINGRA_SERVER=https://…)' },
  );
  // Reading on while the answer goes out: closing on unread bytes would reset the connection
  // and could take the answer with it.
  socket.resume();
  socket.setTimeout(FIRST_BYTE_TIMEOUT_MS, () => socket.destroy());
}
