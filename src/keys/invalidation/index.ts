/**
 * The invalidation bus: instances tell each other, through PostgreSQL NOTIFY, to drop a tenant's
 * cached keys (delivered at commit when sent inside a transaction), and listen for those notices
 * on a connection of their own, through the driver the app uses (one file each).
 */
import { sql } from 'drizzle-orm';
import { ByokConfigError } from '../../errors.ts';
import type { AnyPgDatabase } from '../../store/db.ts';
import type { KeyStore } from '../key-store.ts';
import { isNodePostgres, listenNodePostgres } from './node-postgres.ts';
import { formatNotice, INVALIDATION_CHANNEL, type Notice, parseNotice } from './notice.ts';
import { isPglite, listenPglite } from './pglite.ts';
import { isPostgresJs, listenPostgresJs } from './postgres-js.ts';

export { formatNotice, INVALIDATION_CHANNEL, type Notice, parseNotice } from './notice.ts';

export class InvalidationBus {
  readonly #store: KeyStore;
  readonly #origin: string;
  readonly #listenClient: unknown;

  /** `origin`: this instance's id (its own notices are not delivered back to it). */
  constructor(store: KeyStore, origin: string, listenClient: unknown) {
    this.#store = store;
    this.#origin = origin;
    this.#listenClient = listenClient;
  }

  /** Tells every instance (at commit when `db` is a transaction) to drop a tenant's keys. */
  async notify(db: AnyPgDatabase, tenantId: string, reason: string, keyRef?: string): Promise<void> {
    const payload = formatNotice(tenantId, reason, this.#origin, keyRef);
    await this.#store.run(
      () => db.execute(sql`select pg_notify(${INVALIDATION_CHANNEL}, ${payload})`),
      !this.#store.isStoreDb(db),
    );
  }

  /**
   * Listens for other instances' notices: on `listenClient` when given, else on a connection of
   * its own opened from the key store's client (postgres.js, node-postgres or PGlite). Returns the
   * function that stops listening.
   */
  async listen(onNotice: (notice: Notice) => void): Promise<() => Promise<void>> {
    const given = this.#listenClient as Record<string, unknown> | undefined;
    const client =
      given ??
      ((this.#store.writeDb as { $client?: unknown }).$client as Record<string, unknown> | undefined);
    const onPayload = (payload: string | undefined) => {
      const notice = parseNotice(payload);
      if (notice !== undefined && notice.origin !== this.#origin) onNotice(notice);
    };
    if (client !== undefined && isPostgresJs(client)) return listenPostgresJs(client, onPayload);
    if (client !== undefined && isPglite(client)) return listenPglite(client, onPayload);
    if (client !== undefined && isNodePostgres(client))
      return listenNodePostgres(client, given !== undefined, onPayload);
    throw new ByokConfigError(
      'startListening: unsupported driver; use postgres.js, node-postgres or PGlite (or pass listenClient)',
    );
  }
}
