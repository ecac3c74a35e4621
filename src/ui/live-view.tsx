/**
 * Mounts the live request log on the terminal and takes it down again. Kept apart from the
 * runner so that plain and NDJSON output never load React or Ink.
 */
import { render } from 'ink';
import { LiveLog } from './LiveLog.js';
import type { LiveLogModel } from './live-log-model.js';

export interface LiveView {
  /** Prints what is pending, unmounts, and gives the terminal back (cooked mode, cursor). */
  stop(): Promise<void>;
}

export function startLiveView(
  model: LiveLogModel,
  handlers: { onQuit: () => void; onInterrupt: () => void },
): LiveView {
  const control: { flush?: () => void } = {};
  const element = (
    <LiveLog model={model} onQuit={handlers.onQuit} onInterrupt={handlers.onInterrupt} control={control} />
  );
  const instance = render(element, {
    // Ctrl-C is a key in raw mode; the runner turns it into the same leave as SIGINT.
    exitOnCtrlC: false,
    // Stray console.* calls go above the live part instead of tearing it.
    patchConsole: true,
  });
  let stopped: Promise<void> | undefined;
  return {
    stop: () => {
      stopped ??= (async () => {
        model.flushOutput();
        control.flush?.();
        // React schedules updates made outside its own handlers for later; a synchronous
        // re-render commits them now, or unmounting would drop the last frame ("ended").
        instance.rerender(element);
        instance.unmount();
        await instance.waitUntilExit().catch(() => undefined);
      })();
      return stopped;
    },
  };
}
