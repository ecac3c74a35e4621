/**
 * HTTP/2 flow-control settings for the tunnel, the same on both ends. These windows are
 * what bound memory: a stream never has more than STREAM_WINDOW bytes in flight, and the
 * whole tunnel never more than SESSION_WINDOW, whatever the body size.
 */
export const STREAM_WINDOW = 1 << 20;
export const SESSION_WINDOW = 8 << 20;

export const H2_SETTINGS = {
  initialWindowSize: STREAM_WINDOW,
  maxConcurrentStreams: 10_000,
  maxFrameSize: 64 * 1024,
  enablePush: false,
};
