import { afterEach, describe, expect, it } from 'vitest';
import type { CreateResult, EndReason, Intercept } from '../../server/store/intercept-store.js';
import { MemoryInterceptStore } from '../../server/store/memory-store.js';

const TTL = 30_000;

class Clock {
  t = 1_000_000;
  now = () => this.t;
  advance(ms: number) {
    this.t += ms;
  }
}

const stores: MemoryInterceptStore[] = [];
function setup() {
  const clock = new Clock();
  const store = new MemoryInterceptStore(TTL, clock.now);
  stores.push(store);
  const ended: [Intercept, EndReason][] = [];
  store.on('ended', (i, r) => ended.push([i, r]));
  return { clock, store, ended };
}
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

const alice = {
  service: 'billing',
  tenant: 't1',
  holder: 'alice@laptop',
  tokenName: 'default',
  clientKey: 'client-a',
  replicaId: 'ks-1',
  kafkaTopics: [] as string[],
  localPort: 3000,
};
const bob = { ...alice, holder: 'bob@desk', clientKey: 'client-b', localPort: 4000 };

function created(result: CreateResult): Intercept {
  if (!result.ok) throw new Error(`expected ok, held by ${result.holder.holder}`);
  return result.intercept;
}

describe('MemoryInterceptStore', () => {
  it('creates an intercept with an id, timestamps from the clock, and makes it findable', async () => {
    const { store, clock } = setup();
    const r = await store.create(alice);
    expect(r.ok && r.renewed).toBe(false);
    const i = created(r);
    expect(i.id).toMatch(/^icp_[0-9a-f]{12}$/);
    expect(i).toMatchObject({ ...alice, createdAt: clock.t, expiresAt: clock.t + TTL });
    expect(store.find('billing', 't1')).toBe(i);
    expect(store.get(i.id)).toBe(i);
    expect(store.list()).toEqual([i]);
    expect(store.ttlMs).toBe(TTL);
  });

  it('keys by (service, tenant): other tenants and services are independent', async () => {
    const { store } = setup();
    const a = created(await store.create(alice));
    const b = created(await store.create({ ...bob, tenant: 't2' }));
    const c = created(await store.create({ ...bob, service: 'orders' }));
    expect(new Set([a.id, b.id, c.id]).size).toBe(3);
    expect(store.find('billing', 't1')?.holder).toBe('alice@laptop');
    expect(store.find('billing', 't2')?.holder).toBe('bob@desk');
    expect(store.find('orders', 't1')?.holder).toBe('bob@desk');
    expect(store.find('orders', 't2')).toBeUndefined();
    // The key cannot be forged by joining names differently.
    expect(store.find('billingt', '1')).toBeUndefined();
  });

  it('refuses a second client on the same (service, tenant), naming the holder, and leaves the lease alone', async () => {
    const { store, clock } = setup();
    const first = created(await store.create(alice));
    clock.advance(1000);
    const r = await store.create(bob);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.holder.holder).toBe('alice@laptop');
    expect(r.holder.id).toBe(first.id);
    expect(store.find('billing', 't1')?.clientKey).toBe('client-a');
    expect(store.find('billing', 't1')?.expiresAt).toBe(first.createdAt + TTL);
    expect(store.find('billing', 't1')?.localPort).toBe(3000);
  });

  it('the same client re-asserting renews the same intercept and takes the new port', async () => {
    const { store, clock, ended } = setup();
    const first = created(await store.create(alice));
    clock.advance(20_000);
    const r = await store.create({ ...alice, localPort: 3001 });
    expect(r.ok && r.renewed).toBe(true);
    const again = created(r);
    expect(again.id).toBe(first.id);
    expect(again.createdAt).toBe(first.createdAt);
    expect(again.expiresAt).toBe(clock.t + TTL);
    expect(again.localPort).toBe(3001);
    expect(store.list()).toHaveLength(1);
    expect(ended).toEqual([]);
  });

  it('renew extends only the caller’s own live leases and reports the rest missing', async () => {
    const { store, clock } = setup();
    const a = created(await store.create(alice));
    const b = created(await store.create({ ...bob, tenant: 't2' }));
    clock.advance(TTL - 1);
    const r = await store.renew('client-a', [a.id, b.id, 'icp_doesnotexist']);
    expect(r).toEqual({ renewed: [a.id], missing: [b.id, 'icp_doesnotexist'] });
    expect(store.get(a.id)?.expiresAt).toBe(clock.t + TTL);
    expect(store.get(b.id)?.expiresAt).toBe(b.createdAt + TTL); // not extended by someone else
    clock.advance(1);
    // b lapsed; a lives on thanks to the renewal.
    expect(store.get(b.id)).toBeUndefined();
    expect(store.find('billing', 't1')?.id).toBe(a.id);
  });

  it('cannot renew a lease that has already lapsed', async () => {
    const { store, clock } = setup();
    const a = created(await store.create(alice));
    clock.advance(TTL);
    expect(await store.renew('client-a', [a.id])).toEqual({ renewed: [], missing: [a.id] });
    expect(store.find('billing', 't1')).toBeUndefined();
  });

  it('expires on lookup, between sweeps, exactly at expiresAt, with an "expired" event', async () => {
    const { store, clock, ended } = setup();
    const a = created(await store.create(alice));
    clock.advance(TTL - 1);
    expect(store.find('billing', 't1')).toBe(a);
    clock.advance(1);
    expect(store.get(a.id)).toBeUndefined();
    expect(store.find('billing', 't1')).toBeUndefined();
    expect(ended).toEqual([[a, 'expired']]);
    // Removed once: looking again does not emit again.
    expect(store.find('billing', 't1')).toBeUndefined();
    expect(store.list()).toEqual([]);
    expect(ended).toHaveLength(1);
  });

  it('a lapsed lease no longer blocks anyone: another client takes over', async () => {
    const { store, clock, ended } = setup();
    const a = created(await store.create(alice));
    clock.advance(TTL + 5);
    const r = await store.create(bob);
    const b = created(r);
    expect(r.ok && r.renewed).toBe(false);
    expect(b.id).not.toBe(a.id);
    expect(b.holder).toBe('bob@desk');
    expect(ended).toEqual([[a, 'expired']]);
    expect(store.get(a.id)).toBeUndefined();
  });

  it('list sweeps lapsed leases and emits one "expired" each', async () => {
    const { store, clock, ended } = setup();
    const a = created(await store.create(alice));
    clock.advance(10_000);
    const b = created(await store.create({ ...bob, tenant: 't2' }));
    clock.advance(TTL - 10_000);
    expect(store.list()).toEqual([b]);
    expect(ended).toEqual([[a, 'expired']]);
  });

  it('delete ends a live lease with "left" and frees the key', async () => {
    const { store, ended } = setup();
    const a = created(await store.create(alice));
    expect(await store.delete(a.id)).toBe(a);
    expect(ended).toEqual([[a, 'left']]);
    expect(store.find('billing', 't1')).toBeUndefined();
    expect(await store.delete(a.id)).toBeUndefined();
    expect(ended).toHaveLength(1);
    expect(created(await store.create(bob)).holder).toBe('bob@desk');
  });

  it('delete of an unknown id is a no-op', async () => {
    const { store, ended } = setup();
    expect(await store.delete('icp_nope')).toBeUndefined();
    expect(ended).toEqual([]);
  });

  it('sweeps on its own timer even when nobody looks', async () => {
    const clock = new Clock();
    const store = new MemoryInterceptStore(40, clock.now); // sweeps every 10 ms
    stores.push(store);
    const ended: EndReason[] = [];
    store.on('ended', (_i, r) => ended.push(r));
    await store.create(alice);
    clock.advance(40);
    const deadline = Date.now() + 2000;
    while (ended.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(ended).toEqual(['expired']);
  });
});
