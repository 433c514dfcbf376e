/**
 * SigV4 verification of the local AWS server: the canonical request, the string to sign and the
 * signing key derived from the secret access key, the credential scope (service, region) and the
 * clock skew allowed between `X-Amz-Date` and the server.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Credential } from './identity.ts';
import type { Caller } from './policies.ts';
import { commonError, headerValue } from './protocol.ts';

function escapeUri(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function canonicalPath(rawPath: string): string {
  const segments: string[] = [];
  for (const seg of rawPath.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') segments.pop();
    else segments.push(escapeUri(decodeURIComponent(seg)));
  }
  const trailing = segments.length > 0 && rawPath.endsWith('/') ? '/' : '';
  return `/${segments.join('/')}${trailing}`;
}

function canonicalQuery(search: URLSearchParams): string {
  const pairs: [string, string][] = [];
  for (const [k, v] of search) {
    if (k.toLowerCase() === 'x-amz-signature') continue;
    pairs.push([escapeUri(k), escapeUri(v)]);
  }
  pairs.sort((a, b) => (a[0] === b[0] ? (a[1] < b[1] ? -1 : 1) : a[0] < b[0] ? -1 : 1));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

interface ParsedAuthorization {
  readonly accessKeyId: string;
  readonly date: string;
  readonly region: string;
  readonly service: string;
  readonly signedHeaders: readonly string[];
  readonly signature: string;
}

function parseAuthorization(value: string): ParsedAuthorization | undefined {
  const m =
    /^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$/.exec(
      value.trim(),
    );
  if (!m) return undefined;
  return {
    accessKeyId: m[1]!,
    date: m[2]!,
    region: m[3]!,
    service: m[4]!,
    signedHeaders: m[5]!.split(';'),
    signature: m[6]!,
  };
}

function parseAmzDate(value: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return undefined;
  return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
}

function formatAmzDate(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

function sha256Buf(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/**
 * Verifies a request's SigV4 signature and returns its principal and region. Error names are the
 * KMS ones; the STS handler renames them.
 */
export function verifySigV4(
  req: IncomingMessage,
  body: Buffer,
  service: 'kms' | 'sts',
  credentials: ReadonlyMap<string, Credential>,
  maxSkewMs: number,
): Caller {
  const authorization = headerValue(req, 'authorization');
  if (authorization === undefined) {
    throw commonError('MissingAuthenticationTokenException', 'Missing Authentication Token');
  }
  const auth = parseAuthorization(authorization);
  if (auth === undefined) {
    throw commonError(
      'IncompleteSignatureException',
      'Authorization header requires Credential, SignedHeaders and Signature parameters.',
    );
  }
  const invalidToken = commonError(
    'UnrecognizedClientException',
    'The security token included in the request is invalid.',
  );
  const cred = credentials.get(auth.accessKeyId);
  if (cred === undefined) throw invalidToken;
  const token = headerValue(req, 'x-amz-security-token');
  if (cred.sessionToken !== undefined || token !== undefined) {
    if (
      cred.sessionToken === undefined ||
      token === undefined ||
      !timingSafeEqual(sha256Buf(token), sha256Buf(cred.sessionToken))
    ) {
      throw invalidToken;
    }
  }
  if (service !== auth.service) {
    throw commonError(
      'InvalidSignatureException',
      `Credential should be scoped to correct service: '${service}'.`,
    );
  }
  if (!/^[a-z]{2,4}(-[a-z]+)+-\d{1,2}$/.test(auth.region)) {
    throw commonError('InvalidSignatureException', 'Credential should be scoped to a valid region.');
  }
  const amzDate = headerValue(req, 'x-amz-date');
  const signedAt = amzDate === undefined ? undefined : parseAmzDate(amzDate);
  if (amzDate === undefined || signedAt === undefined || !amzDate.startsWith(auth.date)) {
    throw commonError(
      'IncompleteSignatureException',
      'Date must be in ISO-8601 basic format and match the credential scope.',
    );
  }
  const now = Date.now();
  if (Math.abs(now - signedAt) > maxSkewMs) {
    throw commonError(
      'InvalidSignatureException',
      `Signature expired: ${amzDate} is now earlier than ${formatAmzDate(now - maxSkewMs)} (${formatAmzDate(now)} - ${maxSkewMs / 60_000} min.)`,
    );
  }
  if (!auth.signedHeaders.includes('host')) {
    throw commonError(
      'InvalidSignatureException',
      "'Host' must be a 'SignedHeader' in the AWS Authorization.",
    );
  }
  const url = new URL(req.url ?? '/', 'http://localhost');
  const canonicalHeaders = auth.signedHeaders
    .map((name) => {
      const v = (headerValue(req, name) ?? '')
        .replace(/[\r\n]/g, ' ')
        .replace(/[ \t]+/g, ' ')
        .trim();
      return `${name}:${v}\n`;
    })
    .join('');
  const payloadHash = headerValue(req, 'x-amz-content-sha256') ?? sha256Hex(body);
  const canonicalRequest = [
    req.method ?? 'POST',
    canonicalPath(url.pathname),
    canonicalQuery(url.searchParams),
    canonicalHeaders,
    auth.signedHeaders.join(';'),
    payloadHash,
  ].join('\n');
  const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  const kDate = hmac(`AWS4${cred.secretAccessKey}`, auth.date);
  const kSigning = hmac(hmac(hmac(kDate, auth.region), auth.service), 'aws4_request');
  const expected = createHmac('sha256', kSigning).update(stringToSign, 'utf8').digest();
  if (!timingSafeEqual(expected, Buffer.from(auth.signature, 'hex'))) {
    throw commonError(
      'InvalidSignatureException',
      'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.',
    );
  }
  if (cred.expiresAt !== undefined && cred.expiresAt <= now) {
    throw commonError('ExpiredTokenException', 'The security token included in the request is expired');
  }
  return { principal: cred.principal, region: auth.region };
}
