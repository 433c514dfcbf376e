/** LISTEN through PGlite's own `listen` (one in-process connection). */
import { INVALIDATION_CHANNEL } from './notice.ts';

/** Whether `client` is a PGlite instance (a `listen` without postgres.js's `unsafe`). */
export function isPglite(client: Record<string, unknown>): boolean {
  return typeof client.listen === 'function' && typeof client.unsafe !== 'function';
}

/** Listens on the invalidation channel; returns the function that stops listening. */
export async function listenPglite(
  client: Record<string, unknown>,
  onPayload: (payload: string | undefined) => void,
): Promise<() => Promise<void>> {
  const unsub = await (client.listen as (c: string, fn: (p: string) => void) => Promise<() => Promise<void>>)(
    INVALIDATION_CHANNEL,
    onPayload,
  );
  return () => unsub();
}
