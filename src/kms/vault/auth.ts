/**
 * Vault tokens for the KEK: a given token, or a login (AppRole, Kubernetes, JWT) whose token is
 * kept until 80 % of its lease, renewed with `auth/token/renew-self` while renewable, and replaced
 * by a new login when renewal fails or Vault refuses it (403 once: the token was revoked or expired).
 */
import { readFile } from 'node:fs/promises';
import { VaultHttpError, vaultRequest } from './http.ts';
import { DEFAULT_K8S_TOKEN_FILE, type ResolvedVaultOptions, type VaultAuth } from './options.ts';

/** A failure to obtain a token (login refused, token file unreadable). */
export class VaultCredentialFailure extends Error {
  constructor(message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'VaultCredentialFailure';
  }
}

interface Held {
  readonly token: string;
  /** When to renew or log in again (ms epoch); Infinity for a token that does not expire. */
  readonly refreshAt: number;
  readonly renewable: boolean;
}

/** What an auth method's `login` path is called with. */
function loginPath(auth: Exclude<VaultAuth, { type: 'token' }>): string {
  const mount = auth.mount ?? auth.type;
  return `auth/${mount}/login`;
}

export function describeVaultAuth(auth: VaultAuth): string {
  switch (auth.type) {
    case 'token':
      return 'a Vault token';
    case 'approle':
      return `AppRole ${auth.roleId} (auth/${auth.mount ?? 'approle'})`;
    case 'kubernetes':
      return `Kubernetes role ${auth.role} (auth/${auth.mount ?? 'kubernetes'})`;
    case 'jwt':
      return `JWT role ${auth.role} (auth/${auth.mount ?? 'jwt'})`;
  }
}

export class VaultTokenSource {
  readonly #o: ResolvedVaultOptions;
  #held: Held | undefined;
  #pending: Promise<Held> | undefined;
  /** Logins made (for tests and the bench: a cached token means no login per call). */
  logins = 0;

  constructor(o: ResolvedVaultOptions) {
    this.#o = o;
  }

  /** Whether a refused token can be replaced by logging in again. */
  get canLogin(): boolean {
    return this.#o.auth.type !== 'token';
  }

  async token(): Promise<string> {
    const auth = this.#o.auth;
    if (auth.type === 'token') return auth.token;
    const held = this.#held;
    if (held !== undefined && Date.now() < held.refreshAt) return held.token;
    if (this.#pending === undefined) {
      const pending = this.#refresh(held);
      this.#pending = pending;
      pending.then(
        (h) => {
          this.#held = h;
          if (this.#pending === pending) this.#pending = undefined;
        },
        () => {
          if (this.#pending === pending) this.#pending = undefined;
        },
      );
    }
    return (await this.#pending).token;
  }

  /** Forgets `token` after Vault refused it, so the next call logs in again. */
  invalidate(token: string): void {
    if (this.#held?.token === token) this.#held = undefined;
  }

  async #refresh(held: Held | undefined): Promise<Held> {
    if (held?.renewable) {
      try {
        const res = await vaultRequest(this.#o, {
          method: 'POST',
          path: 'auth/token/renew-self',
          body: {},
          token: held.token,
          ...this.#ns(),
        });
        const a = res.body.auth;
        if (typeof a?.client_token === 'string' && a.client_token !== '') return this.#held_(a);
      } catch {
        // Renewal refused (max TTL reached, token revoked): log in again.
      }
    }
    return this.#login();
  }

  async #login(): Promise<Held> {
    const auth = this.#o.auth as Exclude<VaultAuth, { type: 'token' }>;
    let body: Record<string, unknown>;
    switch (auth.type) {
      case 'approle':
        body = { role_id: auth.roleId, secret_id: auth.secretId };
        break;
      case 'kubernetes':
        body = { role: auth.role, jwt: await readJwt(auth.jwtFile ?? DEFAULT_K8S_TOKEN_FILE) };
        break;
      case 'jwt':
        body = { role: auth.role, jwt: auth.jwt ?? (await readJwt(auth.jwtFile!)) };
        break;
    }
    this.logins++;
    let res: Awaited<ReturnType<typeof vaultRequest>>;
    try {
      res = await vaultRequest(this.#o, { method: 'POST', path: loginPath(auth), body, ...this.#ns() });
    } catch (e) {
      if (e instanceof VaultHttpError && !e.notVault && e.status < 500 && e.status !== 429) {
        throw new VaultCredentialFailure(
          `the login with ${describeVaultAuth(auth)} was refused (HTTP ${e.status}${e.errors.length > 0 ? `: ${e.errors.join('; ')}` : ''})`,
        );
      }
      throw e;
    }
    const a = res.body.auth;
    if (typeof a?.client_token !== 'string' || a.client_token === '') {
      throw new VaultCredentialFailure(`the login with ${describeVaultAuth(auth)} returned no token`);
    }
    return this.#held_(a);
  }

  #held_(a: NonNullable<import('./http.ts').VaultBody['auth']>): Held {
    const lease = typeof a.lease_duration === 'number' && a.lease_duration > 0 ? a.lease_duration : 0;
    return {
      token: a.client_token!,
      refreshAt: lease === 0 ? Number.POSITIVE_INFINITY : Date.now() + lease * 800,
      renewable: a.renewable === true,
    };
  }

  #ns(): { namespace?: string } {
    const ns = this.#o.authNamespace ?? this.#o.namespace;
    return ns === undefined ? {} : { namespace: ns };
  }
}

async function readJwt(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new VaultCredentialFailure(
      `the token file ${file} could not be read (${(e as { code?: string }).code ?? 'error'})`,
    );
  }
  const jwt = text.trim();
  if (jwt === '') throw new VaultCredentialFailure(`the token file ${file} is empty`);
  return jwt;
}
