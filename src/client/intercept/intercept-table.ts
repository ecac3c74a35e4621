/** Plain-text table of intercepts for `list` and `status`. */
import type { InterceptView } from '../../shared/protocol.js';

export function interceptTable(intercepts: InterceptView[], now = Date.now()): string {
  if (intercepts.length === 0) return 'No intercepts.';
  const rows = [
    ['ID', 'SERVICE', 'TENANT', 'HOLDER', 'PORT', 'TUNNEL', 'LEASE', 'KAFKA'],
    ...intercepts.map((i) => [
      i.id,
      i.service,
      i.tenant,
      i.holder,
      String(i.localPort),
      i.connected ? 'connected' : 'disconnected',
      `${Math.max(0, Math.round((Date.parse(i.expiresAt) - now) / 1000))} s`,
      i.kafkaTopics?.length ? i.kafkaTopics.join(',') : '-',
    ]),
  ];
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] as string).length))) ?? [];
  return rows
    .map((r) =>
      r
        .map((cell, c) => cell.padEnd(widths[c] as number))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}
