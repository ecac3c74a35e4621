/** How `status` and `connect` say which token this is to the server and what its role lets it do. */
import type { ServerStatus } from '../shared/protocol.js';

export function principalLine(p: NonNullable<ServerStatus['principal']>): string {
  const reach =
    p.role === 'admin'
      ? 'every tenant; sees and ends anyone’s intercepts and routes'
      : `tenants ${p.tenants.join(', ')}; ends the intercepts it made`;
  return `Token ${p.name}: ${p.role} (${reach})`;
}
