/**
 * Client side of tenant routes (`kelsingra route …`): reading the flags (tenant lists,
 * target URLs) and printing routes for people. The server owns the routes; see
 * server/routing/route-table.ts.
 */
import { ExitCode, KelsingraError } from '../shared/errors.js';
import type { RemoveRoutesResult, RouteView, SetRouteResult } from '../shared/protocol.js';

/** Tenants shown before a long list is shortened to `… (+N more)`. */
const SHOWN_TENANTS = 3;
/** `moved` lines printed before the rest is summed up (all of them are in --json). */
const SHOWN_MOVES = 20;

/** `--tenants t1,t2 --tenants t3` → [t1, t2, t3]: comma-separated and/or repeated, trimmed, deduplicated. */
export function parseTenants(values: readonly string[] | undefined): string[] {
  const tenants = (values ?? []).flatMap((v) => v.split(',')).map((t) => t.trim());
  return [...new Set(tenants.filter((t) => t !== ''))];
}

/** One `--to` value, checked (an absolute http(s) URL with a host) and normalised as the server stores it. */
export function parseTarget(value: string, usage: string): string {
  const text = value.trim();
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.hostname === '') {
    throw new KelsingraError(
      `--to ${JSON.stringify(value)} is not an http(s) URL`,
      ExitCode.usage,
      `give the base URL of the version to route to, e.g. --to http://billing-v2:8080 (${usage})`,
    );
  }
  return url.href;
}

/** Every `--to`, checked and deduplicated (several make a pool). */
export function parseTargets(values: readonly string[] | undefined, usage: string): string[] {
  return [...new Set((values ?? []).map((v) => parseTarget(v, usage)))];
}

/** `t1, t2, t3 … (+997 more)` for long lists, so one route stays one line. */
export function shortTenants(tenants: readonly string[], shown = SHOWN_TENANTS): string {
  if (tenants.length <= shown + 1) return tenants.join(', ');
  return `${tenants.slice(0, shown).join(', ')} … (+${tenants.length - shown} more)`;
}

/** `billing for t1, t2 → http://billing-v2:8080` */
export function describeRoute(route: RouteView): string {
  return `${route.service} for ${shortTenants(route.tenants)} → ${route.targets.join(', ')}`;
}

/** Plain-text table of routes for `route list`. */
export function routeTable(routes: readonly RouteView[]): string {
  const rows = [
    ['ID', 'SERVICE', 'TENANTS', 'TO'],
    ...routes.map((r) => [r.id, r.service, shortTenants(r.tenants), r.targets.join(', ')]),
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

/** What `route set` did, one line per fact. */
export function setRouteLines(result: SetRouteResult): string[] {
  const lines = [
    `route ${result.route.id}: ${describeRoute(result.route)} (${result.created ? 'created' : 'updated'})`,
  ];
  for (const m of result.moved.slice(0, SHOWN_MOVES)) lines.push(`${m.tenant} moved from ${m.from}`);
  if (result.moved.length > SHOWN_MOVES)
    lines.push(`… and ${result.moved.length - SHOWN_MOVES} more tenants moved (--json lists them all)`);
  for (const id of result.removed) lines.push(`route ${id} removed: it has no tenants left`);
  return lines;
}

/** What `route delete` did, one line per route. */
export function removeRouteLines(result: RemoveRoutesResult): string[] {
  return [
    ...result.removed.map((r) => `removed route ${r.id}: ${describeRoute(r)}`),
    ...result.updated.map((r) => `updated route ${r.id}: now ${describeRoute(r)}`),
  ];
}
