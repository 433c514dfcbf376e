/**
 * What the local Vault's route handlers share with the server: the request as they see it, the
 * server state, and the answers they build. Its own module, so the routes and the server import it
 * and not each other.
 */
import type { VaultServerOperation } from './faults.ts';
import type { JwtIssuer, VaultNamespaceState, VaultTokenRecord, VaultTokens } from './identity.ts';
import type { VaultCapability } from './policy.ts';

/** A request as the route handlers see it. */
export interface VaultRequest {
  readonly method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'LIST';
  /** Path after `/v1/`, without the namespace. */
  readonly path: string;
  readonly body: Record<string, unknown>;
  readonly ns: VaultNamespaceState;
  readonly token: VaultTokenRecord | undefined;
}

export class VaultHttpAnswer {
  readonly status: number;
  readonly body: Record<string, unknown> | undefined;
  constructor(status: number, body: Record<string, unknown> | undefined) {
    this.status = status;
    this.body = body;
  }
}

export const answer = (data: Record<string, unknown> | null, extra: Record<string, unknown> = {}) =>
  new VaultHttpAnswer(200, {
    request_id: crypto.randomUUID(),
    lease_id: '',
    renewable: false,
    lease_duration: 0,
    data,
    wrap_info: null,
    warnings: null,
    auth: null,
    ...extra,
  });
export const noContent = () => new VaultHttpAnswer(204, undefined);
export const failure = (status: number, ...errors: string[]) => new VaultHttpAnswer(status, { errors });
export const denied = () => failure(403, 'permission denied');

/** What a route needs to know before it runs: for counters, faults and the ACL check. */
export interface RouteInfo {
  readonly operation: VaultServerOperation;
  readonly key?: string;
  /** Capability the ACL must grant on the path; undefined for unauthenticated paths. */
  readonly capability?: VaultCapability;
  /** Whether the path needs no token (logins, health). */
  readonly open?: boolean;
  readonly run: () => VaultHttpAnswer;
}

export interface ServerState {
  readonly namespaces: Map<string, VaultNamespaceState>;
  readonly tokens: VaultTokens;
  readonly kubernetes: JwtIssuer;
  readonly oidc: JwtIssuer;
  readonly rootToken: string;
  sealed: boolean;
}
