/**
 * A spinner on stderr for slow network steps. Only in a terminal: with stderr piped,
 * under CI, or with --json it does nothing, so scripts see no control codes.
 */
const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
/** Steps faster than this show no spinner at all (no flicker). */
const DELAY_MS = 150;

export interface Spinner {
  stop(): void;
}

export function startSpinner(
  text: string,
  opts: { enabled?: boolean; stream?: NodeJS.WriteStream } = {},
): Spinner {
  const stream = opts.stream ?? process.stderr;
  if (opts.enabled === false || !stream.isTTY || process.env.CI || process.env.TERM === 'dumb')
    return { stop: () => undefined };
  let frame = 0;
  let drawn = false;
  const draw = () => {
    stream.write(`\r\x1b[2K${FRAMES[frame++ % FRAMES.length]} ${text}`);
    drawn = true;
  };
  let timer: NodeJS.Timeout | undefined;
  const delay = setTimeout(() => {
    draw();
    timer = setInterval(draw, 80);
    timer.unref();
  }, DELAY_MS);
  delay.unref();
  return {
    stop: () => {
      clearTimeout(delay);
      clearInterval(timer);
      if (drawn) stream.write('\r\x1b[2K');
      drawn = false;
    },
  };
}
