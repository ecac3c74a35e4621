/**
 * Token secrets as the server keeps them: the SHA-256 of the secret. Shared by the server agent
 * (which compares digests) and `kelsingra token hash` (which writes them into tokens files), so
 * the two cannot disagree on what is hashed.
 */
import { createHash, randomBytes } from 'node:crypto';
import { stringify } from 'yaml';
import { ExitCode, KelsingraError } from './errors.js';

export const MIN_TOKEN_LENGTH = 8;
export const TOKEN_ROLES = ['admin', 'developer'] as const;
export type TokenRole = (typeof TOKEN_ROLES)[number];

export function tokenDigest(secret: string): Buffer {
  return createHash('sha256').update(secret, 'utf8').digest();
}

/** 32 random bytes: more than anyone can guess, whatever the rate limit. */
export function generateToken(): string {
  return `ks_${randomBytes(32).toString('base64url')}`;
}

/**
 * The secret as a client will present it. Clients send it in a header that is trimmed, so
 * surrounding whitespace (the newline of `echo`) can never be part of it.
 */
export function secretFromInput(input: string): string {
  const secret = input.trim();
  if (secret === '')
    throw new KelsingraError(
      'no secret on stdin',
      ExitCode.usage,
      'pipe it in: printf %s "$SECRET" | kelsingra token hash, or let --generate make one',
    );
  if (/[\r\n]/.test(secret))
    throw new KelsingraError(
      'the secret on stdin spans several lines',
      ExitCode.usage,
      'give one secret, on one line',
    );
  if (secret.length < MIN_TOKEN_LENGTH)
    throw new KelsingraError(
      `the secret is shorter than ${MIN_TOKEN_LENGTH} characters, which the server refuses`,
      ExitCode.usage,
      'use a longer one, or let --generate make one',
    );
  return secret;
}

export interface TokenEntry {
  name: string;
  tokenSha256: string;
  tenants: string[];
  role: TokenRole;
}

/** One item of a tokens file's `tokens:` list, ready to paste (or append) under it. */
export function tokenEntryYaml(entry: TokenEntry): string {
  const item = stringify([entry]);
  // Indented to sit under `tokens:` like the entries of tokens.example.yaml.
  return item.replace(/^/gm, '  ').trimEnd();
}

/** A secret is short; more than this on stdin is a mistake (a file piped in), not a token. */
const MAX_INPUT = 4096;

export async function readSecret(stdin: NodeJS.ReadableStream & { isTTY?: boolean }): Promise<string> {
  // Typed at a terminal the secret would be echoed and kept in the scrollback.
  if (stdin.isTTY)
    throw new KelsingraError(
      'kelsingra token hash reads the secret from stdin, not from a terminal',
      ExitCode.usage,
      'pipe it in: printf %s "$SECRET" | kelsingra token hash --name <name>, or let --generate make one',
    );
  let input = '';
  for await (const chunk of stdin) {
    input += chunk.toString();
    if (input.length > MAX_INPUT)
      throw new KelsingraError(
        `more than ${MAX_INPUT} bytes on stdin: that is not one secret`,
        ExitCode.usage,
        'give one secret, on one line',
      );
  }
  return secretFromInput(input);
}

export interface HashedToken {
  /** Only when it was generated here: whoever ran the command hands it on once. */
  secret?: string;
  tokenSha256: string;
}

export async function hashToken(opts: {
  generate: boolean;
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
}): Promise<HashedToken> {
  const secret = opts.generate ? generateToken() : await readSecret(opts.stdin);
  return {
    secret: opts.generate ? secret : undefined,
    tokenSha256: tokenDigest(secret).toString('hex'),
  };
}
