/**
 * KEK instances built from key store rows: each tenant KEK is rebuilt once per row from its stored
 * configuration by the keyring's factory for its kind (its sealed secret opened with the platform
 * key), then kept until a lifecycle change or an invalidation drops it.
 */
import { ByokConfigError } from '../errors.ts';
import type { Kek, KekConfig, KekFactory } from '../kms/kek.ts';
import type { KekRow } from './key-store.ts';
import type { SealedSecretColumns } from './sealing.ts';

export class KekInstances {
  readonly #factories: Readonly<Partial<Record<string, KekFactory>>>;
  readonly #openSecret: (
    tenantId: string,
    kekId: string,
    row: SealedSecretColumns,
  ) => Promise<Record<string, unknown>>;
  readonly #instances = new Map<string, Promise<Kek>>();
  readonly #idsByTenant = new Map<string, Set<string>>();

  constructor(
    factories: Readonly<Partial<Record<string, KekFactory>>>,
    openSecret: (
      tenantId: string,
      kekId: string,
      row: SealedSecretColumns,
    ) => Promise<Record<string, unknown>>,
  ) {
    this.#factories = factories;
    this.#openSecret = openSecret;
  }

  /** Whether a KEK kind can be rebuilt from stored configuration. */
  hasFactory(kind: string): boolean {
    return this.#factories[kind] !== undefined;
  }

  /** The KEK instance for a stored KEK row (built once per row, secrets decrypted with the platform key). */
  kekFor(row: KekRow): Promise<Kek> {
    let p = this.#instances.get(row.id);
    if (p === undefined) {
      const ids = this.#idsByTenant.get(row.tenantId) ?? new Set<string>();
      this.#idsByTenant.set(row.tenantId, ids);
      ids.add(row.id);
      p = this.#build(row);
      p.catch(() => this.#instances.delete(row.id));
      this.#instances.set(row.id, p);
    }
    return p;
  }

  /** The KEK rows of a tenant that instances were built for (on this keyring). */
  idsOf(tenantId: string): Iterable<string> {
    return this.#idsByTenant.get(tenantId) ?? [];
  }

  /** Forgets built KEK instances for these KEK rows (after a lifecycle change). */
  drop(ids: Iterable<string>): void {
    for (const id of ids) {
      const p = this.#instances.get(id);
      this.#instances.delete(id);
      p?.then((k) => k.close?.()).catch(() => undefined);
    }
  }

  /** Forgets every instance and closes those that were built. */
  async closeAll(): Promise<void> {
    const keks = await Promise.allSettled(this.#instances.values());
    this.#instances.clear();
    for (const k of keks) if (k.status === 'fulfilled') await k.value.close?.();
  }

  async #build(row: KekRow): Promise<Kek> {
    const factory = this.#factories[row.kind];
    if (factory === undefined) {
      throw new ByokConfigError(
        `tenant ${row.tenantId} uses a '${row.kind}' KEK but the keyring has no factory for it: ` +
          `pass kekFactories: { '${row.kind}': ... } to createKeyring`,
        { tenantId: row.tenantId },
      );
    }
    const secret = row.secret === null ? undefined : await this.#openSecret(row.tenantId, row.id, row);
    const config: KekConfig = {
      kind: row.kind as KekConfig['kind'],
      params: row.params as Record<string, unknown>,
      ...(secret ? { secret } : {}),
    };
    return factory(config);
  }
}
