/**
 * The intercept command's Kafka flags, parsed: `--kafka-local host:port`,
 * `--kafka-topic <dev>[=<local>]` and `--forward-topic <local>[=<dev>]`.
 */
import { ExitCode, KelsingraError } from '../../shared/errors.js';

export interface KafkaOptions {
  /** The developer's own broker, host:port. */
  local: string;
  /** Dev topic → local topic, for the topics asked for; empty means every topic of the service, same names. */
  topics: Record<string, string>;
  /** Local topic → dev topic, consumed here and produced in dev as the tenant. */
  forward: Record<string, string>;
}

const TOPIC = /^[A-Za-z0-9._-]{1,249}$/;

function pairs(values: string[], flag: string, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const [from, to = from] = v.split('=', 2).map((s) => s.trim()) as [string, string?];
    if (!TOPIC.test(from) || !TOPIC.test(to)) {
      throw new KelsingraError(
        `${flag} "${v}" is not ${what}`,
        ExitCode.usage,
        `write it as ${flag} orders or ${flag} orders=orders.local (topic names: letters, digits, . _ -)`,
      );
    }
    out[from] = to;
  }
  return out;
}

export function parseKafkaOptions(flags: {
  local?: string;
  topics?: string[];
  forward?: string[];
}): KafkaOptions | undefined {
  if (!flags.local) {
    if (flags.topics?.length || flags.forward?.length) {
      throw new KelsingraError(
        '--kafka-topic and --forward-topic need --kafka-local',
        ExitCode.usage,
        'add --kafka-local localhost:9092 (your own broker)',
      );
    }
    return undefined;
  }
  if (!/^[^:\s]+:\d{1,5}$/.test(flags.local)) {
    throw new KelsingraError(
      `--kafka-local "${flags.local}" is not host:port`,
      ExitCode.usage,
      'write it as --kafka-local localhost:9092',
    );
  }
  return {
    local: flags.local,
    topics: pairs(flags.topics ?? [], '--kafka-topic', '<dev-topic>[=<local-topic>]'),
    forward: pairs(flags.forward ?? [], '--forward-topic', '<local-topic>[=<dev-topic>]'),
  };
}

/** The same options as flags again, for the detached agent's command line. */
export function kafkaFlags(options: KafkaOptions | undefined): string[] {
  if (!options) return [];
  return [
    '--kafka-local',
    options.local,
    ...Object.entries(options.topics).flatMap(([dev, local]) => ['--kafka-topic', `${dev}=${local}`]),
    ...Object.entries(options.forward).flatMap(([local, dev]) => ['--forward-topic', `${local}=${dev}`]),
  ];
}
