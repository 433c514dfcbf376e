import { describe, expect, it } from 'vitest';
import { type ByokEvent, withTenant } from '../src/index.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { DRIVERS, uniqueTenant } from './helpers/db.ts';
import { setupEncryptedDb, sibling } from './helpers/setup.ts';

/** Cross-instance invalidation over LISTEN/NOTIFY, on every driver's own listening mechanism. */
describe.each(DRIVERS)('invalidation notices on %s', (driver) => {
  it('a lifecycle change on one instance evicts the tenant on another; its own notices are ignored', async () => {
    const a = await setupEncryptedDb(driver);
    const b = await sibling(a, { kek: a.kek });
    try {
      const T = uniqueTenant('notify');
      await withTenant(T, () => a.db.insert(a.s.patients).values({ tenantId: T, name: 'cached' }));
      expect(keysOf(a.keyring).cache.active(T)).toBeDefined();
      const seen: ByokEvent[] = [];
      a.keyring.onEvent((ev) => {
        // Other test files share the database and its channel: count this test's tenant only.
        if (ev.type === 'invalidation' && ev.tenantId === T) seen.push(ev);
      });
      const listener = await a.keyring.startListening();
      expect(await a.keyring.startListening()).toBe(listener);
      await a.keyring.rotateDek(T); // a's own notice: evicts locally, not reported as remote
      await b.keyring.rotateDek(T);
      const deadline = Date.now() + 3000;
      while (
        !seen.some((ev) => ev.type === 'invalidation' && ev.source === 'remote') &&
        Date.now() < deadline
      ) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(seen.filter((ev) => ev.type === 'invalidation' && ev.source === 'remote')).toEqual([
        { type: 'invalidation', tenantId: T, reason: 'rotate-dek', source: 'remote' },
      ]);
      expect(keysOf(a.keyring).cache.active(T)).toBeUndefined();
      await listener.stop();
    } finally {
      await b.close();
      await a.close();
    }
  });
});
