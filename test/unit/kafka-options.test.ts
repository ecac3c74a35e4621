import { describe, expect, it } from 'vitest';
import { loadServerConfig } from '../../server/config/config.js';
import { interceptTopic } from '../../server/kafka/kafka-topics.js';
import { kafkaFlags, parseKafkaOptions } from '../../src/client/kafka/kafka-options.js';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import { fromWire, headerText, toWire } from '../../src/shared/kafka-wire.js';

describe('intercept --kafka-local / --kafka-topic / --forward-topic', () => {
  it('maps dev topics to local names, same name when none is given, and forward topics the other way', () => {
    expect(
      parseKafkaOptions({
        local: 'localhost:9092',
        topics: ['orders=orders.local', 'payments'],
        forward: ['invoices.local=invoices'],
      }),
    ).toEqual({
      local: 'localhost:9092',
      topics: { orders: 'orders.local', payments: 'payments' },
      forward: { 'invoices.local': 'invoices' },
    });
  });

  it('is off without --kafka-local, and the topic flags alone are a usage error with a hint', () => {
    expect(parseKafkaOptions({})).toBeUndefined();
    const err = (() => {
      try {
        parseKafkaOptions({ topics: ['orders'] });
      } catch (e) {
        return e as KelsingraError;
      }
    })();
    expect(err?.exitCode).toBe(ExitCode.usage);
    expect(err?.hint).toContain('--kafka-local');
  });

  it.each([
    [{ local: 'localhost' }, '--kafka-local'],
    [{ local: 'localhost:9092', topics: ['or ders'] }, '--kafka-topic'],
    [{ local: 'localhost:9092', forward: ['a=b/c'] }, '--forward-topic'],
  ])('refuses %j naming the flag', (flags, flag) => {
    expect(() => parseKafkaOptions(flags)).toThrow(flag);
  });

  it('round-trips through the detached agent’s command line', () => {
    const options = parseKafkaOptions({ local: 'h:1', topics: ['a=b'], forward: ['c=d'] });
    const flags = kafkaFlags(options);
    expect(
      parseKafkaOptions({
        local: flags[1],
        topics: [flags[flags.indexOf('--kafka-topic') + 1] as string],
        forward: [flags[flags.indexOf('--forward-topic') + 1] as string],
      }),
    ).toEqual(options);
  });
});

describe('Kafka records on the wire', () => {
  it('keeps keys, values, header bytes and a null value apart from an empty one', () => {
    const wire = toWire({
      key: Buffer.from('k1'),
      value: null,
      headers: { 'x-tenant-id': Buffer.from('t1'), bin: Buffer.from([0, 255]) },
    });
    const back = fromWire(wire);
    expect(back.key?.toString()).toBe('k1');
    expect(back.value).toBeNull();
    expect(headerText(back.headers, 'x-tenant-id')).toBe('t1');
    expect(Buffer.compare(back.headers?.bin as Buffer, Buffer.from([0, 255]))).toBe(0);
    expect(fromWire(toWire({ value: Buffer.alloc(0) })).value).toEqual(Buffer.alloc(0));
  });

  it('names one topic per (service, tenant), never sharing one between pairs Kafka would spell alike', () => {
    expect(interceptTopic('billing', 't1')).toMatch(/^kelsingra-billing-t1-[0-9a-f]{10}$/);
    const names = [
      interceptTopic('billing', 'a.b'),
      interceptTopic('billing', 'a_b'),
      interceptTopic('billing', 'acme/eu'),
      interceptTopic('orders-api', 'acme'),
      interceptTopic('orders', 'api-acme'),
      interceptTopic('billing', `${'x'.repeat(300)}1`),
      interceptTopic('billing', `${'x'.repeat(300)}2`),
    ];
    expect(new Set(names).size).toBe(names.length);
    for (const n of names) expect(n).toMatch(/^[A-Za-z0-9_-]{1,249}$/);
  });
});

describe('kafka: in the server config', () => {
  const base = { services: { billing: { upstream: 'http://127.0.0.1:9' } }, token: 'secret-token-1' };
  const load = (kafka: unknown) =>
    loadServerConfig({ env: {}, flags: { ...base, kafka } as Record<string, unknown> });

  it('fills in the defaults: tenant header, split mode', async () => {
    const config = await load({ brokers: ['127.0.0.1:9092'], topics: { orders: { service: 'billing' } } });
    expect(config.kafka?.topics.orders).toEqual({
      service: 'billing',
      tenantHeader: 'x-tenant-id',
      mode: 'split',
    });
  });

  it.each([
    [{ brokers: [], topics: {} }, 'kafka.brokers'],
    [{ brokers: ['nohost'], topics: {} }, 'host:port'],
    [
      { brokers: ['h:1'], topics: { orders: { service: 'billing', mode: 'copy' } } },
      'kafka.topics.orders.mode',
    ],
    [{ brokers: ['h:1'], topics: { orders: { service: 'nope' } } }, 'not a configured service'],
  ])('refuses %j with exit 7 naming the problem', async (kafka, text) => {
    const err = await load(kafka).catch((e: KelsingraError) => e);
    expect(err).toBeInstanceOf(KelsingraError);
    expect((err as KelsingraError).exitCode).toBe(ExitCode.config);
    expect((err as KelsingraError).message).toContain(text);
  });
});
