/** Request and response bodies for tests: patterned uploads with their digest, uploads watched or cut off mid-way, and how a body ended. */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { waitFor } from './waiting.js';

/** Chunk `index` (64 KiB) of a deterministic byte pattern, for large bodies checked by hash. */
export function patternChunk(index: number): Buffer {
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (index * 31 + i * 7) & 0xff;
  return chunk;
}

/** Writes `total` bytes of the pattern to `res` with backpressure, then ends it. */
export function writePattern(
  res: NodeJS.WritableStream & { once: (e: string, f: () => void) => unknown },
  total: number,
): void {
  let written = 0;
  let index = 0;
  const pump = () => {
    while (written < total) {
      const chunk = patternChunk(index++).subarray(0, Math.min(64 * 1024, total - written));
      written += chunk.length;
      if (!res.write(chunk)) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

/** The SHA-256 of the first `total` bytes of the pattern, to check a download against. */
export function patternSha256(total: number): string {
  const hash = createHash('sha256');
  for (let written = 0, index = 0; written < total; index++) {
    const chunk = patternChunk(index).subarray(0, Math.min(64 * 1024, total - written));
    written += chunk.length;
    hash.update(chunk);
  }
  return hash.digest('hex');
}

/** What a service saw of an upload: bytes so far, and whether it ended or was aborted. */
export interface UploadWatch {
  bytes: number;
  ended: boolean;
  aborted: boolean;
}

/** The receiving side of `hangUpMidUpload`: reads the upload into `watch`, answering if it ends. */
export function watchUpload(req: http.IncomingMessage, res: http.ServerResponse, watch: UploadWatch): void {
  req.on('data', (c: Buffer) => {
    watch.bytes += c.length;
  });
  req.on('end', () => {
    watch.ended = true;
    res.end('got it all');
  });
  req.on('close', () => {
    if (!req.complete) watch.aborted = true;
  });
}

/**
 * Starts a chunked POST to `url`, hangs up once the service behind it (`who`, where `watch`
 * records what it saw) has the first 16 KiB, and waits until that service saw the upload end
 * one way or the other. Shared by the pass-through and the tunnel, which must both abort it.
 */
export async function hangUpMidUpload(
  url: string,
  headers: http.OutgoingHttpHeaders,
  watch: UploadWatch,
  who: string,
): Promise<void> {
  Object.assign(watch, { bytes: 0, ended: false, aborted: false });
  const req = http.request(url, {
    method: 'POST',
    headers: { ...headers, 'transfer-encoding': 'chunked' },
    agent: false,
  });
  req.on('error', () => undefined);
  req.write(Buffer.alloc(16 * 1024, 7));
  await waitFor(() => watch.bytes >= 16 * 1024, 15_000, `${who} to receive the first part of the upload`);
  req.destroy();
  await waitFor(() => watch.aborted || watch.ended, 10_000, `${who} request to end one way or the other`);
}

/** Starts a response, then resets the connection: for what callers see of a half-sent body. */
export function resetMidResponse(req: http.IncomingMessage, res: http.ServerResponse): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  res.write(Buffer.alloc(32 * 1024, 1));
  setTimeout(() => req.socket.destroy(), 100);
}

/** How reading `res`'s body ends: 'completed', 'errored', or 'hung' (nothing within 20 s). */
export function bodyOutcome(res: Response): Promise<'completed' | 'errored' | 'hung'> {
  return Promise.race([
    res.arrayBuffer().then(
      () => 'completed' as const,
      () => 'errored' as const,
    ),
    new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000)),
  ]);
}
