/**
 * The audit trail of intercept and route changes: who (token name and role, the holder the
 * client calls itself, its address), what, and the outcome, one JSON line each in the server
 * log (`"log": "audit"`, `"audit": true`, to filter on) and, when configured, in a file of its
 * own. Never a token: only token names.
 */
import { closeSync, openSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import type { Route } from '../routing/route-table.js';
import type { Intercept } from '../store/intercept-store.js';
import type { Principal, TokenRole } from './auth.js';

/** Who made a change; `system` for what the server does itself (a lease lapsing). */
export type Actor =
  | { tokenName: string; role: TokenRole; holder?: string; address: string }
  | { system: true };

export function actorOf(principal: Principal, address: string, holder: string | undefined): Actor {
  return { tokenName: principal.name, role: principal.role, holder, address };
}

/** A route of many thousand tenants would make a line that log pipelines cut: a count, and the first ones. */
const MAX_TENANTS = 1000;

export function tenantsField(tenants: readonly string[]): {
  tenants: string[];
  tenantCount: number;
  tenantsTruncated?: true;
} {
  return tenants.length > MAX_TENANTS
    ? { tenants: tenants.slice(0, MAX_TENANTS), tenantCount: tenants.length, tenantsTruncated: true }
    : { tenants: [...tenants], tenantCount: tenants.length };
}

export function interceptField(i: Intercept) {
  return {
    id: i.id,
    service: i.service,
    tenant: i.tenant,
    holder: i.holder,
    tokenName: i.tokenName,
    localPort: i.localPort,
    ...(i.kafkaTopics.length ? { kafkaTopics: i.kafkaTopics } : {}),
  };
}

export function routeField(r: Route, tenants: readonly string[] = r.tenants) {
  return {
    id: r.id,
    service: r.service,
    targets: r.targets,
    createdBy: r.tokenName,
    ...tenantsField(tenants),
  };
}

export interface AuditEntry {
  action: 'intercept.create' | 'intercept.end' | 'route.set' | 'route.delete';
  /**
   * created, renewed (the same client re-asserting, e.g. after a reconnect), ended, updated,
   * deleted; refused (not allowed) and conflict (held by someone else) change nothing.
   */
  outcome: 'created' | 'renewed' | 'ended' | 'updated' | 'deleted' | 'refused' | 'conflict';
  actor: Actor;
  /** Why an intercept ended (left, kicked by another token, expired), or why a change was refused. */
  reason?: string;
  [field: string]: unknown;
}

export class AuditLog {
  private constructor(
    private readonly log: Logger,
    private file: Logger | undefined,
    private readonly fd: number | undefined,
  ) {}

  /** Fails at start-up, as a configuration error, when the file cannot be opened for appending. */
  static open(log: Logger, path: string | undefined, replica: string): AuditLog {
    const bindings = { log: 'audit', replica };
    // The trail is kept at any --log-level short of silent: turning down noise must not lose it.
    const main = log.child(bindings, { level: log.level === 'silent' ? 'silent' : 'info' });
    if (!path) return new AuditLog(main, undefined, undefined);
    let fd: number;
    try {
      fd = openSync(path, 'a', 0o640);
    } catch (err) {
      throw new KelsingraError(
        `cannot open the audit log ${path}: ${(err as Error).message}`,
        ExitCode.config,
        'check the auditLog path (--audit-log, KELSINGRA_AUDIT_LOG): its directory must exist and the server must be allowed to write there',
      );
    }
    // Written synchronously: a change is not lost from the trail because the process died just after it.
    const file = pino(
      { base: { name: 'kelsingra-server', ...bindings } },
      pino.destination({ fd, sync: true }),
    );
    return new AuditLog(main, file, fd);
  }

  record(entry: AuditEntry): void {
    const line = { audit: true, ...entry };
    const msg = `audit: ${entry.action} ${entry.outcome}`;
    this.log.info(line, msg);
    this.file?.info(line, msg);
  }

  close(): void {
    if (this.fd === undefined || !this.file) return;
    this.file = undefined;
    closeSync(this.fd);
  }
}
