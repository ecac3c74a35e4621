/** Finds an intercept the way commands name one: `<id>`, or `<service> --tenant <t>`. */

import { ExitCode, KelsingraError } from '../../shared/errors.js';
import type { InterceptView } from '../../shared/protocol.js';
import type { ApiClient } from '../api/api-client.js';

export async function findIntercept(
  api: ApiClient,
  target: string,
  tenant: string | undefined,
): Promise<InterceptView> {
  const intercepts = await api.list();
  const found = tenant
    ? intercepts.find((i) => i.service === target && i.tenant === tenant)
    : intercepts.find((i) => i.id === target);
  if (!found) {
    throw new KelsingraError(
      tenant ? `no live intercept of ${target} for tenant ${tenant}` : `no live intercept ${target}`,
      ExitCode.notFound,
      tenant || target.startsWith('icp_')
        ? 'kelsingra list shows the live intercepts'
        : `to name one by service, add --tenant: kelsingra logs ${target} --tenant <t>`,
    );
  }
  return found;
}
