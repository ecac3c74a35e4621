/**
 * HTTP/2 flow-control settings for the tunnel, the same on both ends. These windows are
 * what bound memory: a stream never has more than STREAM_WINDOW bytes in flight, and the
 * whole tunnel never more than SESSION_WINDOW, whatever the body size.
 */
export const STREAM_WINDOW = 1 << 20;
export const SESSION_WINDOW = 8 << 20;

export const H2_SETTINGS = {
  initialWindowSize: STREAM_WINDOW,
  // The server agent opens every stream and enforces its own configured limit (maxTunnelStreams),
  // answering a clear 503 past it; a lower one announced here would only queue streams inside
  // HTTP/2 until the caller got a 504.
  maxConcurrentStreams: 2 ** 32 - 1,
  maxFrameSize: 64 * 1024,
  enablePush: false,
};
