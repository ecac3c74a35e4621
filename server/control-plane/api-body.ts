/**
 * Request and response bodies of the control port's REST API: JSON read with a size limit,
 * checked against a schema (a 400 naming the bad field), and the fields several endpoints share.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { HttpError } from '../../src/shared/error-codes.js';
import { sendError } from '../../src/shared/http/error-response.js';
import type { Principal } from '../auth/auth.js';
import { routingKeyProblem } from '../routing/routing-keys.js';

/** One REST endpoint, as the control port's table holds it by method and path. */
export type Endpoint = (
  req: IncomingMessage,
  res: ServerResponse,
  principal: Principal,
  url: URL,
) => Promise<void> | void;

export const MAX_BODY = 64 * 1024;

/** A tenant an intercept or route names must be one a request can carry as its routing key. */
export const tenantId = z
  .string()
  .min(1)
  .superRefine((t, ctx) => {
    const problem = routingKeyProblem(t);
    if (problem) ctx.addIssue({ code: 'custom', message: `tenant ${JSON.stringify(t)} ${problem}` });
  });

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

/**
 * The body, up to `max` bytes. Past that it fails with a 413 error, and the rest of the body is
 * read and dropped rather than the connection destroyed: the caller still gets the answer.
 */
export async function readJson(req: IncomingMessage, max = MAX_BODY): Promise<unknown> {
  const tooLarge = () => new HttpError(413, 'body-too-large', `request body over ${max} bytes`);
  if (Number(req.headers['content-length']) > max) throw tooLarge();
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= max) {
        chunks.push(chunk);
        return;
      }
      req.off('data', onData);
      req.resume();
      reject(tooLarge());
    };
    req.on('data', onData);
    req.once('end', resolve);
    req.once('error', reject);
  });
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw new HttpError(400, 'bad-request', 'request body is not valid JSON');
  }
}

/** The request's JSON body checked against `schema`, or undefined once a 400 naming the bad field is sent. */
export async function parseBody<T>(
  req: IncomingMessage,
  res: ServerResponse,
  schema: z.ZodType<T>,
  what: string,
  max = MAX_BODY,
): Promise<T | undefined> {
  const parsed = schema.safeParse(await readJson(req, max));
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  sendError(
    res,
    400,
    'bad-request',
    `invalid ${what}: ${issue?.path.join('.') || 'body'}: ${issue?.message}`,
  );
  return undefined;
}
