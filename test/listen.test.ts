import { sql } from 'drizzle-orm';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type ByokEvent, withTenant } from '../src/index.ts';
import { formatNotice, INVALIDATION_CHANNEL, parseNotice } from '../src/keys/invalidation/index.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { DRIVERS, uniqueTenant } from './helpers/db.ts';
import { setupEncryptedDb, sibling } from './helpers/setup.ts';

/** Payloads on the channel come from anyone allowed to NOTIFY: reading one never throws. */
describe('invalidation notice payloads', () => {
  it('any text or JSON value is a notice only when it is exactly one, and never throws', () => {
    const anyPayload = fc.oneof(
      fc.string(),
      fc.json(),
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc
        .record({ t: fc.jsonValue(), r: fc.jsonValue(), o: fc.jsonValue() }, { requiredKeys: [] })
        .map((v) => JSON.stringify(v)),
      fc.constantFrom('null', '[]', '1', '"x"', 'true', '{', '', undefined),
    );
    fc.assert(
      fc.property(anyPayload, (payload) => {
        const n = parseNotice(payload);
        if (n !== undefined) {
          expect(typeof n.tenantId).toBe('string');
          expect(typeof n.reason).toBe('string');
        }
      }),
      { numRuns: 2000 },
    );
    expect(parseNotice(formatNotice('acme', 'rotate-dek', 'o1', 'k1'))).toEqual({
      tenantId: 'acme',
      reason: 'rotate-dek',
      origin: 'o1',
      keyRef: 'k1',
    });
  });
});

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
      // Hostile payloads first: each is ignored, and the listener keeps working after them.
      for (const junk of ['null', '[]', '7', '"x"', '{', '{"t":1,"r":2}', '{"t":null}', 'x'.repeat(7000)]) {
        await b.db.execute(sql`select pg_notify(${INVALIDATION_CHANNEL}, ${junk})`);
      }
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
