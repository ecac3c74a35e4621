/**
 * Piping out of an HTTP/2 stream so that a reset is never mistaken for a clean end. Node
 * emits 'end' on a stream that was reset (after 'aborted'), so a plain pipe() would end the
 * destination and hand a truncated body on as if it were whole.
 */
import http2, { type Http2Stream } from 'node:http2';
import type { Writable } from 'node:stream';

export function pipeUnlessReset(stream: Http2Stream, dest: Writable): void {
  let clean = false;
  stream.pipe(dest, { end: false });
  stream.once('end', () => {
    const code = stream.rstCode;
    if (stream.aborted || (code !== undefined && code !== http2.constants.NGHTTP2_NO_ERROR)) return;
    clean = true;
    dest.end();
  });
  stream.once('close', () => {
    if (!clean) dest.destroy(new Error(`HTTP/2 stream reset (code ${stream.rstCode})`));
  });
}
