/** LISTEN through postgres.js: its `listen` opens a dedicated connection (not one of the pool's). */
import { INVALIDATION_CHANNEL } from './notice.ts';

/** Whether `client` is a postgres.js `sql` instance. */
export function isPostgresJs(client: Record<string, unknown>): boolean {
  return typeof client.listen === 'function' && typeof client.unsafe === 'function';
}

/** Listens on the invalidation channel; returns the function that stops listening. */
export async function listenPostgresJs(
  client: Record<string, unknown>,
  onPayload: (payload: string | undefined) => void,
): Promise<() => Promise<void>> {
  const sub = (await (
    client.listen as (c: string, fn: (p: string) => void) => Promise<{ unlisten(): Promise<void> }>
  )(INVALIDATION_CHANNEL, onPayload)) as { unlisten(): Promise<void> };
  return () => sub.unlisten();
}
