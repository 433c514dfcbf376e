/**
 * LISTEN through node-postgres, on a connection of its own (never a pooled connection, never the
 * app's only client), reconnecting after errors.
 */
import { INVALIDATION_CHANNEL } from './notice.ts';

/** Whether `client` is a node-postgres `Pool` or `Client`. */
export function isNodePostgres(client: Record<string, unknown>): boolean {
  return typeof client.connect === 'function' && typeof client.query === 'function';
}

/**
 * Listens on the invalidation channel through the app's pool or client (`dedicated` false: a new
 * client of the same class and configuration) or a `listenClient` given for the purpose
 * (`dedicated`); returns the function that stops listening.
 */
export function listenNodePostgres(
  client: Record<string, unknown>,
  dedicated: boolean,
  onPayload: (payload: string | undefined) => void,
): Promise<() => Promise<void>> {
  return listenNodePg(nodePgListenConnection(client, dedicated), onPayload);
}

type NodePgConn = {
  query(q: string): Promise<unknown>;
  on(ev: string, fn: (m: { channel: string; payload?: string }) => void): void;
  release?: (err?: unknown) => void;
  end?: () => Promise<void>;
};

/**
 * How the listener gets its node-postgres connection. The app's pool or client: a new client of
 * the same class and configuration (never a pooled connection, never the app's only client). A
 * `listenClient` given for the purpose: a connection from it (a pool) or the client itself.
 */
function nodePgListenConnection(
  client: Record<string, unknown>,
  dedicated: boolean,
): { open(): Promise<NodePgConn>; close(c: NodePgConn, failed: boolean): Promise<void> } {
  const isPool = typeof client.totalCount === 'number';
  if (dedicated && isPool) {
    return {
      open: async () => (await (client.connect as () => Promise<NodePgConn>)()) as NodePgConn,
      close: async (c, failed) => c.release?.(failed ? true : undefined),
    };
  }
  if (dedicated) {
    let connected = false;
    return {
      open: async () => {
        if (!connected) {
          connected = true;
          const state = client as { _connected?: boolean; _connecting?: boolean };
          if (!state._connected && !state._connecting) await (client.connect as () => Promise<void>)();
        }
        return client as unknown as NodePgConn;
      },
      close: async () => undefined,
    };
  }
  type Ctor = new (config: unknown) => NodePgConn & { connect(): Promise<void> };
  const Client = (isPool ? client.Client : client.constructor) as Ctor;
  const config = isPool
    ? client.options
    : (() => {
        const p = client.connectionParameters as Record<string, unknown>;
        return {
          user: p.user,
          database: p.database,
          port: p.port,
          host: p.host,
          password: p.password,
          ssl: p.ssl,
          application_name: p.application_name,
          client_encoding: p.client_encoding,
        };
      })();
  return {
    open: async () => {
      const c = new Client(config);
      await c.connect();
      return c;
    },
    close: async (c) => {
      await c.end?.().catch(() => undefined);
    },
  };
}

/** LISTEN on a dedicated node-postgres connection, reconnecting after errors. */
async function listenNodePg(
  source: { open(): Promise<NodePgConn>; close(c: NodePgConn, failed: boolean): Promise<void> },
  onPayload: (p: string | undefined) => void,
): Promise<() => Promise<void>> {
  let stopped = false;
  let conn: NodePgConn | undefined;
  const connect = async (): Promise<void> => {
    const c = await source.open();
    conn = c;
    c.on('notification', (m) => {
      if (m.channel === INVALIDATION_CHANNEL) onPayload(m.payload);
    });
    c.on('error', () => {
      void source.close(c, true);
      conn = undefined;
      if (!stopped) setTimeout(() => void connect().catch(() => undefined), 500).unref();
    });
    await c.query(`LISTEN ${INVALIDATION_CHANNEL}`);
  };
  await connect();
  return async () => {
    stopped = true;
    const c = conn;
    conn = undefined;
    if (c !== undefined) {
      await c.query(`UNLISTEN ${INVALIDATION_CHANNEL}`).catch(() => undefined);
      await source.close(c, false);
    }
  };
}
