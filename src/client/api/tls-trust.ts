/**
 * Trusting a server agent whose certificate comes from a private CA, and explaining TLS
 * failures. The CA is added to this process's default trust (besides the system's and
 * NODE_EXTRA_CA_CERTS), so every connection to the server trusts it alike: the REST API
 * (undici), the tunnel (ws), the event stream and the outbound gateway.
 */
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { ExitCode, KelsingraError } from '../../shared/errors.js';

const trusted = new Set<string>();

/** Adds the PEM CA file at `path` to the certificates this process trusts. */
export function trustCa(path: string): void {
  if (trusted.has(path)) return;
  let pem: string;
  try {
    pem = readFileSync(path, 'utf8');
  } catch (err) {
    throw new KelsingraError(
      `cannot read the CA file ${path}: ${(err as Error).message}`,
      ExitCode.usage,
      'point --ca (kelsingra connect) or KELSINGRA_CA at the PEM file of the CA that signed the server agent certificate',
    );
  }
  if (typeof tls.setDefaultCACertificates !== 'function')
    throw new KelsingraError(
      `trusting the CA file ${path} needs Node.js 24 (this is ${process.version})`,
      ExitCode.usage,
      `run the CLI on Node.js 24, or set NODE_EXTRA_CA_CERTS=${path} instead of --ca / KELSINGRA_CA`,
    );
  try {
    tls.setDefaultCACertificates([...tls.getCACertificates('default'), pem]);
  } catch (err) {
    throw new KelsingraError(
      `the CA file ${path} holds no usable PEM certificate: ${(err as Error).message}`,
      ExitCode.usage,
      'give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)',
    );
  }
  trusted.add(path);
}

/** OpenSSL's and Node's codes for a certificate this process does not trust. */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
]);

/** What to do about a TLS failure reaching `server`, or undefined when `code` is no TLS failure. */
export function tlsHint(code: string | undefined, server: string): string | undefined {
  if (code === undefined) return undefined;
  if (UNTRUSTED.has(code))
    return `the server's certificate is not signed by a CA this machine trusts: give its CA with kelsingra connect --server ${server} --ca <ca.pem> (or KELSINGRA_CA, or NODE_EXTRA_CA_CERTS)`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    return `the server's certificate does not name the host in ${server}: use a URL with a name the certificate covers`;
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID')
    return "the server's certificate is outside its validity period: the platform team must renew it (or check this machine's clock)";
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'EPROTO' || code.startsWith('ERR_SSL_'))
    return server.startsWith('https:')
      ? `the server does not speak TLS on that port: use http:// instead of https:// (${server.replace(/^https:/, 'http:')})`
      : undefined;
  return undefined;
}
