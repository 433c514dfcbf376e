/**
 * Vault's HTTP API over `node:http` / `node:https`: JSON in and out, `X-Vault-Token` and
 * `X-Vault-Namespace` headers, a deadline per attempt. `node:https` rather than the platform
 * `fetch`, because a private CA (`caCertificate`) and a TLS server name have no `fetch` option
 * without importing undici; there is no maintained Vault client worth a dependency (node-vault has
 * not kept up with Vault's API and pulls request-promise).
 */
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { ResolvedVaultOptions } from './options.ts';

/** Most bytes read from an answer (transit answers are small; anything larger is not Vault's). */
const MAX_ANSWER_BYTES = 1024 * 1024;

export interface VaultCall {
  readonly method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'LIST';
  /** API path after `/v1/`, e.g. `transit/encrypt/acme`. */
  readonly path: string;
  readonly body?: Record<string, unknown>;
  readonly token?: string;
  readonly namespace?: string;
}

export interface VaultAnswer {
  readonly status: number;
  readonly body: VaultBody;
}

/** The envelope of a Vault answer. */
export interface VaultBody {
  readonly data?: Record<string, unknown> | null;
  readonly auth?: {
    readonly client_token?: string;
    readonly lease_duration?: number;
    readonly renewable?: boolean;
    readonly policies?: readonly string[];
  } | null;
  readonly errors?: readonly string[];
  readonly warnings?: readonly string[] | null;
}

/** Vault answered with a status other than 2xx. `errors` are Vault's own texts (no secrets). */
export class VaultHttpError extends Error {
  readonly status: number;
  readonly errors: readonly string[];
  readonly retryAfterMs: number | undefined;
  /** The answer was not JSON from Vault (a proxy, a load balancer, another server). */
  readonly notVault: boolean;
  constructor(status: number, errors: readonly string[], headers: IncomingHttpHeaders, notVault: boolean) {
    super(`HTTP ${status}${errors.length > 0 ? `: ${errors.join('; ')}` : ''}`);
    this.name = 'VaultHttpError';
    this.status = status;
    this.errors = errors;
    this.notVault = notVault;
    const ra = Number(headers['retry-after']);
    this.retryAfterMs = Number.isFinite(ra) && ra >= 0 ? Math.min(ra * 1000, 10_000) : undefined;
  }
}

/** No answer: connection refused or reset, DNS, TLS, or the deadline passed. */
export class VaultNetworkError extends Error {
  readonly code: string | undefined;
  constructor(message: string, code: string | undefined) {
    super(message);
    this.name = 'VaultNetworkError';
    this.code = code;
  }
}

/** An answer that is 2xx but not the JSON Vault sends. */
export class VaultAnswerError extends Error {
  override name = 'VaultAnswerError';
}

export function vaultRequest(o: ResolvedVaultOptions, call: VaultCall): Promise<VaultAnswer> {
  const url = new URL(`/v1/${call.path}`, o.address);
  const body = call.body === undefined ? undefined : Buffer.from(JSON.stringify(call.body), 'utf8');
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(body.length);
  }
  if (call.token !== undefined) headers['x-vault-token'] = call.token;
  if (call.namespace !== undefined) headers['x-vault-namespace'] = call.namespace;
  if (call.method === 'LIST') headers['x-vault-request'] = 'true';
  const https = url.protocol === 'https:';
  const send = https ? httpsRequest : httpRequest;
  return new Promise<VaultAnswer>((resolve, reject) => {
    let settled = false;
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      reject(e);
    };
    const req = send(
      url,
      {
        method: call.method,
        headers,
        timeout: o.timeoutMs,
        ...(https && o.caCertificate !== undefined ? { ca: o.caCertificate } : {}),
        ...(https && o.tlsServerName !== undefined ? { servername: o.tlsServerName } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_ANSWER_BYTES) {
            req.destroy();
            fail(new VaultAnswerError('the answer is larger than any Vault answer'));
            return;
          }
          chunks.push(c);
        });
        res.on('error', (e) => fail(new VaultNetworkError(e.message, (e as { code?: string }).code)));
        res.on('end', () => {
          if (settled) return;
          const status = res.statusCode ?? 0;
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          let json = false;
          if (text.length === 0) {
            parsed = {};
            json = status === 204;
          } else {
            try {
              parsed = JSON.parse(text);
              json = parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed);
            } catch {
              parsed = undefined;
            }
          }
          settled = true;
          if (status >= 200 && status < 300) {
            if (!json && status !== 204) {
              reject(new VaultAnswerError(`HTTP ${status} with an answer that is not JSON`));
              return;
            }
            resolve({ status, body: (parsed ?? {}) as VaultBody });
            return;
          }
          const errors =
            json && Array.isArray((parsed as VaultBody).errors)
              ? (parsed as VaultBody).errors!.filter((x): x is string => typeof x === 'string').map(trim)
              : [];
          reject(new VaultHttpError(status, errors, res.headers, !json));
        });
      },
    );
    req.on('timeout', () => {
      req.destroy();
      fail(new VaultNetworkError(`no answer within ${o.timeoutMs} ms`, 'ETIMEDOUT'));
    });
    req.on('error', (e) => fail(new VaultNetworkError(e.message, (e as { code?: string }).code)));
    req.end(body);
  });
}

/** Vault's error texts, one line each, bounded (they come from the server: never trusted for length). */
function trim(s: string): string {
  const one = s.replace(/\s+/g, ' ').trim();
  return one.length > 300 ? `${one.slice(0, 300)}...` : one;
}
