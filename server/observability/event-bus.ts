/**
 * Live events from the server agent for `kelsingra logs` and `kelsingra dashboard`:
 * tunnelled requests, intercepts starting and ending, upstream health. Keeps the last few
 * requests of each live intercept so a view that attaches late has something to show.
 */
import { EventEmitter } from 'node:events';
import type { LeaseLapsedEvent, RequestRecord, ServerEvent } from '../../src/shared/protocol.js';

export type { RequestRecord, ServerEvent } from '../../src/shared/protocol.js';

/** What a view attaching late is shown of an intercept: its requests, and a lease that lapsed. */
export type HistoryEvent = RequestRecord | LeaseLapsedEvent;

const HISTORY = 200;

export class EventBus extends EventEmitter<{ event: [ServerEvent] }> {
  private readonly history = new Map<string, HistoryEvent[]>();

  constructor() {
    super();
    // One listener per open `logs`/`dashboard` stream; dozens are normal, not a leak.
    this.setMaxListeners(0);
  }

  publish(event: ServerEvent): void {
    if (event.type === 'request' || (event.type === 'intercept' && event.action === 'lapsed')) {
      const id = event.type === 'request' ? event.interceptId : event.intercept.id;
      let list = this.history.get(id);
      if (!list) {
        list = [];
        this.history.set(id, list);
      }
      list.push(event);
      if (list.length > HISTORY) list.splice(0, list.length - HISTORY);
    } else if (event.type === 'intercept' && event.action === 'ended') {
      this.history.delete(event.intercept.id);
    }
    if (this.listenerCount('event') > 0) this.emit('event', event);
  }

  recent(interceptId: string): HistoryEvent[] {
    return this.history.get(interceptId) ?? [];
  }

  get subscribers(): number {
    return this.listenerCount('event');
  }
}
