/**
 * `startVaultServer()`: a local HashiCorp Vault speaking Vault's HTTP API (`/v1/...`, JSON,
 * `X-Vault-Token`, `X-Vault-Namespace`) on 127.0.0.1, so `drizzle-byok/vault` (and any Vault
 * client) runs unchanged. Served: `sys/health`, `sys/namespaces`, `sys/mounts`, `sys/auth`,
 * `sys/policies/acl`, the token auth method (create, lookup-self, renew-self, revoke-self, revoke),
 * AppRole, Kubernetes and JWT logins, and the transit engine (keys: create, read, delete, rotate,
 * config; encrypt, decrypt, rewrap), with ACL policies checked on every path.
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { VaultAdmin } from './admin.ts';
import {
  denied,
  failure,
  type RouteInfo,
  type ServerState,
  VaultHttpAnswer,
  type VaultRequest,
} from './answers.ts';
import { CallLog, FaultBox, type VaultCallRecord, type VaultCounters, type VaultFaults } from './faults.ts';
import {
  type AppRoleRecord,
  JwtIssuer,
  VaultNamespaceState,
  type VaultTokenRecord,
  VaultTokens,
} from './identity.ts';
import { capabilitiesOn, DEFAULT_POLICY, parsePolicy, type VaultCapability } from './policy.ts';
import { routeAuth, routeSys } from './routes-sys.ts';
import { routeTransit } from './routes-transit.ts';
import type { CreateTransitKeyOptions } from './transit.ts';
import { selfSignedCertificate } from '../tls.ts';

export interface VaultServerOptions {
  /** TCP port on 127.0.0.1; default 0 (a random free port). */
  port?: number;
  /**
   * HTTPS with a self-signed certificate for 127.0.0.1 and localhost (made with the `openssl`
   * command), trusted by clients through `caCertificate`; default false (plain HTTP).
   */
  tls?: boolean;
}

/** A running server. Admin methods act on the root namespace; `namespace(path)` on another. */
export interface VaultServer extends VaultAdmin {
  /** `http://127.0.0.1:<port>` (`https:` with `tls`): the `address` option of `vaultTransit`. */
  readonly address: string;
  readonly port: number;
  /** With `tls`: PEM of the server's self-signed certificate, the KEK's `caCertificate`. */
  readonly caCertificate: string | undefined;
  /** A root token of the root namespace (policy `root`, no expiry). */
  readonly rootToken: string;
  readonly faults: VaultFaults;
  readonly counters: VaultCounters;
  /** The admin handle of a namespace (created on first use, like `vault namespace create`). */
  namespace(path: string): VaultAdmin;
  /** Seals the server: every call but `sys/health` answers 503 "Vault is sealed" until `unseal()`. */
  seal(): void;
  unseal(): void;
  /** Removes namespaces, keys, policies, roles, tokens (but the root token), faults, counters. */
  reset(): void;
  close(): Promise<void>;
}

const MAX_BODY = 1024 * 1024;

export async function startVaultServer(options: VaultServerOptions = {}): Promise<VaultServer> {
  const tokens = new VaultTokens();
  const state: ServerState = {
    namespaces: new Map([['', new VaultNamespaceState('')]]),
    tokens,
    kubernetes: new JwtIssuer('kubernetes/serviceaccount'),
    oidc: new JwtIssuer('https://oidc.drizzle-byok.test'),
    rootToken: tokens.issue({ namespace: '', policies: ['root'], ttlSeconds: 0, displayName: 'root' }).id,
    sealed: false,
  };
  const faults = new FaultBox();
  const counters = new CallLog();
  const sockets = new Set<Socket>();

  const listener = (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) send(res, failure(500, 'internal error'));
    });
  };
  const cert = options.tls === true ? selfSignedCertificate() : undefined;
  const server =
    cert === undefined
      ? createHttpServer(listener)
      : createHttpsServer({ cert: cert.certPem, key: cert.keyPem }, listener);
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > MAX_BODY) return send(res, failure(413, 'request body too large'));
      chunks.push(c as Buffer);
    }
    let body: Record<string, unknown> = {};
    const text = Buffer.concat(chunks).toString('utf8');
    if (text.trim() !== '') {
      try {
        const parsed = JSON.parse(text);
        if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error();
        body = parsed;
      } catch {
        return send(res, failure(400, 'failed to parse JSON input'));
      }
    }
    if (!url.pathname.startsWith('/v1/'))
      return send(res, failure(404, `no handler for route "${url.pathname}"`));
    const path = decodeURIComponent(url.pathname.slice(4)).replace(/\/+$/, '');
    const raw = (req.method ?? 'GET').toUpperCase();
    const method = (
      raw === 'GET' && url.searchParams.get('list') === 'true' ? 'LIST' : raw
    ) as VaultRequest['method'];
    const nsName = String(req.headers['x-vault-namespace'] ?? '').replace(/^\/+|\/+$/g, '');
    const auth = req.headers.authorization;
    const tokenId =
      (req.headers['x-vault-token'] as string | undefined) ??
      (typeof auth === 'string' && /^bearer /i.test(auth) ? auth.slice(7) : undefined);

    if (path === 'sys/health') {
      return send(
        res,
        new VaultHttpAnswer(state.sealed ? 503 : 200, {
          initialized: true,
          sealed: state.sealed,
          standby: false,
          version: '1.18.0',
          cluster_name: 'drizzle-byok-test',
        }),
      );
    }
    const ns = state.namespaces.get(nsName);
    const token = tokens.live(tokenId);
    const record: VaultCallRecord = {
      operation: 'other',
      path,
      namespace: nsName,
      key: undefined,
      principal: token?.displayName,
      status: undefined,
    };
    const finish = (a: VaultHttpAnswer) => {
      record.status = a.status;
      counters.record(record);
      send(res, a);
    };
    if (state.sealed) return finish(failure(503, 'Vault is sealed'));
    if (ns === undefined)
      return finish(failure(404, `no handler for route "${path}". route entry not found.`));
    const request: VaultRequest = { method, path, body, ns, token };
    let route: RouteInfo | undefined;
    try {
      route = routeSys(state, request) ?? routeAuth(state, request) ?? routeTransit(request);
    } catch (e) {
      return finish(failure(400, e instanceof Error ? e.message : 'invalid request'));
    }
    if (route === undefined) {
      return finish(failure(404, `1 error occurred:\n\t* unsupported path\n\n`));
    }
    Object.assign(record, { operation: route.operation, key: route.key });
    if (!route.open) {
      // The token must be live and of this namespace or a parent of it.
      const inNamespace =
        token !== undefined &&
        (token.namespace === '' || nsName === token.namespace || nsName.startsWith(`${token.namespace}/`));
      if (!inNamespace) return finish(denied());
    }
    const plan = faults.plan(record);
    if (plan.latencyMs > 0) await new Promise((r) => setTimeout(r, plan.latencyMs));
    if (plan.hang) {
      await new Promise<void>((resolve) => faults.hung.add(resolve));
      if (res.destroyed) return;
    }
    if (plan.fail !== undefined) {
      const text =
        plan.fail === 429
          ? `request path "${path}": rate limit quota exceeded`
          : plan.fail === 503
            ? 'Vault is sealed'
            : plan.fail === 412
              ? 'required index state not present'
              : 'internal error';
      return finish(failure(plan.fail, text));
    }
    if (
      !route.open &&
      route.capability !== undefined &&
      !allowed(state, ns, token!, path, route.capability)
    ) {
      return finish(denied());
    }
    let a: VaultHttpAnswer;
    try {
      a = route.run();
    } catch (e) {
      const status = (e as { status?: number }).status ?? 400;
      a = failure(status, e instanceof Error ? e.message : 'invalid request');
    }
    if (plan.corrupt !== undefined && a.status === 200) {
      if (plan.corrupt === 'not-json') {
        record.status = 200;
        counters.record(record);
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end('<html><body>proxy</body></html>');
        return;
      }
      a = corrupt(a, plan.corrupt);
    }
    finish(a);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const root = new VaultAdmin(state, state.namespaces.get('')!);
  const handle_ = Object.assign(root, {
    address: `${cert === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    port,
    caCertificate: cert?.certPem,
    rootToken: state.rootToken,
    faults,
    counters,
    namespace(path: string): VaultAdmin {
      const p = path.replace(/^\/+|\/+$/g, '');
      if (p === '') return root;
      let ns = state.namespaces.get(p);
      if (ns === undefined) {
        ns = new VaultNamespaceState(p);
        state.namespaces.set(p, ns);
      }
      return new VaultAdmin(state, ns);
    },
    seal() {
      state.sealed = true;
    },
    unseal() {
      state.sealed = false;
    },
    reset() {
      state.namespaces.clear();
      state.namespaces.set('', new VaultNamespaceState(''));
      (root as unknown as { ns: VaultNamespaceState }).ns = state.namespaces.get('')!;
      tokens.clear(state.rootToken);
      faults.clear();
      counters.reset();
      state.sealed = false;
    },
    async close() {
      faults.clear();
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
  return handle_ as VaultServer;
}

function send(res: ServerResponse, a: VaultHttpAnswer): void {
  if (res.headersSent || res.destroyed) return;
  if (a.body === undefined) {
    res.writeHead(a.status);
    res.end();
    return;
  }
  const text = JSON.stringify(a.body);
  res.writeHead(a.status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(text);
}

/** Whether the token's policies (plus `default`) grant `cap` on `path` in `ns`. */
function allowed(
  state: ServerState,
  ns: VaultNamespaceState,
  token: VaultTokenRecord,
  path: string,
  cap: VaultCapability,
): boolean {
  if (token.policies.includes('root')) return true;
  // Policies are looked up in the token's own namespace, with paths relative to the request's.
  const home = state.namespaces.get(token.namespace) ?? ns;
  const rel =
    token.namespace === ns.path
      ? path
      : `${ns.path.slice(token.namespace === '' ? 0 : token.namespace.length + 1)}/${path}`;
  const rules = [
    ...parsePolicy(DEFAULT_POLICY),
    ...token.policies.flatMap((p) => home.policies.get(p)?.rules ?? []),
  ];
  return capabilitiesOn(rules, rel).has(cap);
}

function corrupt(a: VaultHttpAnswer, field: 'ciphertext' | 'plaintext' | 'key_version'): VaultHttpAnswer {
  const data = { ...((a.body?.data as Record<string, unknown>) ?? {}) };
  if (field === 'key_version' && typeof data.key_version === 'number') data.key_version += 1;
  if (field === 'ciphertext' && typeof data.ciphertext === 'string') {
    const [p, v, b] = data.ciphertext.split(':');
    const raw = Buffer.from(b!, 'base64');
    raw[raw.length - 1]! ^= 1;
    data.ciphertext = `${p}:${v}:${raw.toString('base64')}`;
  }
  if (field === 'plaintext' && typeof data.plaintext === 'string') {
    const raw = Buffer.from(data.plaintext, 'base64');
    if (raw.length > 0) raw[0]! ^= 1;
    data.plaintext = raw.toString('base64');
  }
  return new VaultHttpAnswer(a.status, { ...a.body, data });
}

export type { AppRoleRecord, CreateTransitKeyOptions };
