/**
 * The JSON 1.1 protocol of the local AWS KMS server: request bodies, the errors answered on the
 * wire (`__type` / STS `Code`) and the answers themselves.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** The partition of every ARN the server makes: one server hosts one partition. */
export const PARTITION = 'aws';
const MAX_BODY_BYTES = 1024 * 1024;

export type Json = Record<string, unknown>;

/**
 * An error answered on the wire. `code` is the AWS error name. `common` marks the errors both
 * services share (authentication, throttling, internal errors): `code` has the KMS spelling and the
 * STS handler renames them (`InvalidSignatureException` → `SignatureDoesNotMatch`...).
 */
export class WireError extends Error {
  readonly code: string;
  readonly status: number;
  readonly common: boolean;
  constructor(code: string, message: string, status = 400, common = false) {
    super(message);
    this.code = code;
    this.status = status;
    this.common = common;
  }
}

export function commonError(code: string, message: string, status = 400): WireError {
  return new WireError(code, message, status, true);
}

export function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(',') : v;
}

export function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new WireError('ValidationException', 'request body too large', 413));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** A JSON 1.1 request body: an object (an empty body is `{}`). */
export function parseJsonBody(body: Buffer): Json {
  try {
    const parsed = JSON.parse(body.length === 0 ? '{}' : body.toString('utf8')) as unknown;
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
      throw new Error('not an object');
    return parsed as Json;
  } catch {
    throw new WireError('SerializationException', 'Start of structure or map found where not expected.');
  }
}

/** Timestamps of JSON 1.1 answers: seconds since the epoch. */
export function epochSeconds(d: Date): number {
  return d.getTime() / 1000;
}

/** Writes an answer (the caller checks the server is not closed). */
export function send(res: ServerResponse, status: number, contentType: string, payload: string): void {
  if (res.destroyed || res.writableEnded) return;
  const buf = Buffer.from(payload, 'utf8');
  res.writeHead(status, {
    'content-type': contentType,
    'content-length': buf.length,
    'x-amzn-requestid': randomUUID(),
  });
  res.end(buf);
}

export function sendJson(res: ServerResponse, status: number, payload: unknown): void {
  send(res, status, 'application/x-amz-json-1.1', JSON.stringify(payload));
}
