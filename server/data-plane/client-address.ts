/**
 * The address of the client behind a request to the control port, for the limit on failed
 * token checks and the audit log. Behind an ingress every connection comes from the ingress,
 * and limiting that would turn every developer away after one team's typos: connections from
 * proxies the operator trusts (`trustedProxies`) are taken at their `X-Forwarded-For` word,
 * read from the right (the hop the nearest trusted proxy saw), skipping trusted proxies.
 */
import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';

/** `::ffff:10.0.0.1` (an IPv4 client of a dual-stack socket) is 10.0.0.1. */
function plain(address: string): string {
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

/** An address (`10.0.0.7`, `::1`) or a CIDR block (`10.0.0.0/8`, `fd00::/8`); a problem, or undefined when fine. */
export function proxyProblem(entry: string): string | undefined {
  const [address = '', bits, ...rest] = entry.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return 'must be an IP address or a CIDR block such as 10.0.0.0/8';
  if (bits !== undefined && !(/^\d+$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128)))
    return `the prefix length must be 0–${family === 4 ? 32 : 128}`;
  return undefined;
}

export class ClientAddresses {
  private readonly trusted = new BlockList();
  private readonly anyTrusted: boolean;

  constructor(trustedProxies: readonly string[] = []) {
    for (const entry of trustedProxies) {
      const [address = '', bits] = entry.split('/');
      const type = isIP(address) === 6 ? 'ipv6' : 'ipv4';
      if (bits === undefined) this.trusted.addAddress(address, type);
      else this.trusted.addSubnet(address, Number(bits), type);
    }
    this.anyTrusted = trustedProxies.length > 0;
  }

  of(req: IncomingMessage): string {
    let address = plain(req.socket.remoteAddress ?? '');
    if (!this.anyTrusted || !this.isTrusted(address)) return address;
    const header = req.headers['x-forwarded-for'];
    const hops = (Array.isArray(header) ? header.join(',') : (header ?? '')).split(',');
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = plain((hops[i] as string).trim());
      // Not an address (empty, or a proxy that adds ports): nothing further left can be trusted.
      if (isIP(hop) === 0) break;
      address = hop;
      if (!this.isTrusted(hop)) break;
    }
    return address;
  }

  private isTrusted(address: string): boolean {
    const family = isIP(address);
    return family !== 0 && this.trusted.check(address, family === 6 ? 'ipv6' : 'ipv4');
  }
}
