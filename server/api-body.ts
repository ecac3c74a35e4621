/**
 * Request and response bodies of the control port's REST API: JSON read with a size limit,
 * checked against a schema (a 400 naming the bad field), and the fields several endpoints share.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { sendError } from './error-response.js';
import { routingKeyProblem } from './routing-keys.js';

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

export async function readJson(req: IncomingMessage, max = MAX_BODY): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > max) throw Object.assign(new Error(`request body over ${max} bytes`), { status: 413 });
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw Object.assign(new Error('request body is not valid JSON'), { status: 400 });
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
