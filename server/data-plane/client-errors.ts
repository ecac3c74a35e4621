/**
 * Connections that send something other than HTTP (or TLS) on a port: each gets a Kelsingra
 * answer where one can still be written and is closed, and the operator gets a log line
 * naming the address and the parser's error code. Anyone who can reach a port can send
 * garbage as fast as they like, so the lines are rate-limited per address.
 */

import type http from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { ErrorCode } from '../../src/shared/error-codes.js';
import { writeRawError } from '../../src/shared/http/error-response.js';

export type PortName = 'control' | 'data';

/** One line per address and port per window; what else that address sent is counted into the next. */
export const CLIENT_ERROR_WINDOW_MS = 10_000;
/**
 * Addresses tracked at once. A flood from more addresses than this is still counted, under one
 * "other addresses" line per window, so memory and log volume stay bounded either way.
 */
const MAX_ADDRESSES = 1_000;
const OTHERS = '(other addresses)';

interface Entry {
  port: PortName;
  address: string;
  /** Errors since the last line, not logged one by one. */
  suppressed: number;
  lastCode: string;
  since: number;
}

export interface ClientErrorLogOptions {
  windowMs?: number;
  maxAddresses?: number;
  now?: () => number;
}

export class ClientErrorLog {
  private readonly entries = new Map<string, Entry>();
  private readonly windowMs: number;
  private readonly maxAddresses: number;
  private readonly now: () => number;
  private sweeper?: NodeJS.Timeout;

  constructor(
    private readonly log: Pick<Logger, 'warn'>,
    options: ClientErrorLogOptions = {},
  ) {
    this.windowMs = options.windowMs ?? CLIENT_ERROR_WINDOW_MS;
    this.maxAddresses = options.maxAddresses ?? MAX_ADDRESSES;
    this.now = options.now ?? Date.now;
  }

  /** A connection from `address` was refused for `code` (a parser or TLS error code). */
  report(port: PortName, address: string | undefined, code: string, what: string): void {
    let remote = address || 'unknown';
    let key = `${port} ${remote}`;
    let entry = this.entries.get(key);
    if (!entry && this.entries.size >= this.maxAddresses) {
      remote = OTHERS;
      key = `${port} ${remote}`;
      entry = this.entries.get(key);
    }
    if (entry) {
      entry.suppressed++;
      entry.lastCode = code;
      return;
    }
    this.entries.set(key, { port, address: remote, suppressed: 0, lastCode: code, since: this.now() });
    this.log.warn(
      { port, remoteAddress: remote, code },
      `${what} on the ${port} port; closed that connection (further ones from this address are counted, one line per ${this.windowMs / 1000} s)`,
    );
    this.sweepLater();
  }

  /** Writes the counts of windows that are over; exposed so tests can drive it with their clock. */
  sweep(): void {
    const now = this.now();
    for (const [key, entry] of this.entries) {
      if (now - entry.since < this.windowMs) continue;
      if (entry.suppressed === 0) {
        this.entries.delete(key);
        continue;
      }
      this.log.warn(
        {
          port: entry.port,
          remoteAddress: entry.address,
          code: entry.lastCode,
          suppressed: entry.suppressed,
          seconds: Math.round((now - entry.since) / 1000),
        },
        `${entry.suppressed} more bad connection${entry.suppressed === 1 ? '' : 's'} from this address on the ${entry.port} port, closed without a line each`,
      );
      // The address keeps its slot for one more window: a flood goes on as one line per window.
      entry.suppressed = 0;
      entry.since = now;
    }
    if (this.entries.size === 0) this.stop();
  }

  stop(): void {
    clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  private sweepLater(): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(() => this.sweep(), Math.max(100, this.windowMs / 2));
    this.sweeper.unref();
  }
}

/** The answer Node itself would give, as Kelsingra's JSON error. */
function answerFor(code: string | undefined): { status: number; code: ErrorCode; message: string } {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return { status: 431, code: 'headers-too-large', message: 'request headers too large' };
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return { status: 413, code: 'chunk-extensions-too-large', message: 'chunk extensions too large' };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { status: 408, code: 'request-timeout', message: 'the request did not arrive in time' };
    default:
      return { status: 400, code: 'malformed-request', message: 'malformed request' };
  }
}

/** Answers and logs what the HTTP parser refuses on `server`, instead of Node's bare default. */
export function answerClientErrors(server: http.Server, port: PortName, errors: ClientErrorLog): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex & { remoteAddress?: string }) => {
    // A peer that hung up sent nothing wrong, and there is nobody left to answer.
    if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
      socket.destroy();
      return;
    }
    const answer = answerFor(err.code);
    errors.report(port, socket.remoteAddress, err.code ?? 'unknown', answer.message);
    writeRawError(socket, answer.status, answer.code, `${answer.message} (${err.code})`);
  });
}
