/**
 * Who may end an intercept. Seeing one is a matter of tenants (a token sees the intercepts of
 * its tenants); ending one is narrower, because tenants can be shared between tokens (two
 * teams both allowed `demo`): a developer token ends the intercepts it made, and another
 * token's only when that token may no longer use the tenant (it was removed or narrowed, so
 * nobody else would be left to end it). Admin tokens end anyone's.
 */
import type { Principal } from '../auth/auth.js';
import type { Intercept } from '../store/intercept-store.js';

export interface EndRefusal {
  message: string;
  hint: string;
}

/**
 * Why `principal` may not end `intercept` (undefined when it may). `maker` is the token that
 * made the intercept as configured now, if it still exists.
 */
export function endRefusal(
  principal: Principal,
  intercept: Intercept,
  maker: Principal | undefined,
): EndRefusal | undefined {
  if (principal.role === 'admin' || intercept.tokenName === principal.name) return undefined;
  if (principal.canUseTenant(intercept.tenant) && !maker?.canUseTenant(intercept.tenant)) return undefined;
  return {
    message: `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}) is held by ${intercept.holder} with token "${intercept.tokenName}"; token "${principal.name}" (developer) ends only the intercepts it made`,
    hint: `ask ${intercept.holder} to run kelsingra leave, wait for the lease to lapse, or use an admin token`,
  };
}

/** Whether this end was the holder leaving, or someone else (an admin) ending it. */
export function endReason(principal: Principal, intercept: Intercept): 'left' | 'kicked' {
  return intercept.tokenName === principal.name ? 'left' : 'kicked';
}
