import { randomBytes, randomUUID } from 'node:crypto';
import { integer, pgTable, text } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { open } from '../src/crypto/aead.ts';
import { uuidToBytes } from '../src/crypto/envelope.ts';
import { type BuildContext, inBuildContext, type QueryContext } from '../src/drizzle/columns.ts';
import { scopeStorage } from '../src/scope.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { createKeyring, DecryptionFailedError, encrypted, localKek } from '../src/index.ts';

/**
 * The synchronous column path with cached keys (what `toDriver` / `fromDriver` run inside a query of
 * `withEncryption(db, keyring)`): the same bytes come back, under the right tenant's key only, and
 * any change to the stored bytes is the one `DecryptionFailedError`, however the column's memo of
 * its last key was left by the fields before.
 */
describe('column path with cached keys', () => {
  const t = pgTable('patients', {
    id: integer('id'),
    tenantId: text('tenant_id'),
    name: encrypted.text('name'),
  });
  const keyring = createKeyring({
    db: drizzle.mock(),
    platformKek: localKek({ key: randomBytes(32) }),
    cache: { maxAgeMs: 3_600_000 },
  });
  const tenants = ['acme', 'globex', 'initech'];
  const ids = new Map<string, string>();
  for (const tenant of tenants) {
    const id = randomUUID();
    ids.set(tenant, id);
    keysOf(keyring).cache.put(id, uuidToBytes(id), tenant, 1, randomBytes(32), true);
  }
  const build: BuildContext = { keyring, rowTenants: [], cursor: 0 };
  const write = (tenant: string, value: string) =>
    inBuildContext(build, () =>
      scopeStorage.run({ tenantId: tenant }, () => t.name.mapToDriverValue(value)),
    ) as Buffer;
  const read = (tenant: string | null, stored: Buffer) => {
    const q: QueryContext = { keyring, tenantId: tenant, scoped: true, pending: [], now: Date.now() };
    return scopeStorage.run(q, () => t.name.mapFromDriverValue(stored));
  };

  it('round-trips every string, and refuses every flipped bit and every other tenant, in any order of fields', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            tenant: fc.constantFrom(...tenants),
            reader: fc.constantFrom(...tenants, null),
            value: fc.string({ unit: 'grapheme', maxLength: 300 }),
            flip: fc.option(fc.nat(), { nil: undefined }),
          }),
          { minLength: 1, maxLength: 30 },
        ),
        (fields) => {
          for (const f of fields) {
            const stored = write(f.tenant, f.value);
            expect(stored.subarray(2, 18).equals(uuidToBytes(ids.get(f.tenant)!))).toBe(true);
            if (f.flip !== undefined) {
              const bad = Buffer.from(stored);
              const bit = f.flip % (bad.length * 8);
              bad[bit >> 3]! ^= 1 << (bit & 7);
              let got: unknown;
              try {
                got = read(f.reader ?? f.tenant, bad);
              } catch (e) {
                expect(e).toBeInstanceOf(DecryptionFailedError);
                continue;
              }
              // Only a flip inside the DEK id gets past the synchronous path: it names a key that is
              // not cached, so the read waits for a load (which finds no such key), never a value.
              expect(typeof got).not.toBe('string');
              expect(bit >> 3).toBeGreaterThanOrEqual(2);
              expect(bit >> 3).toBeLessThan(18);
            } else if (f.reader !== null && f.reader !== f.tenant) {
              expect(() => read(f.reader, stored)).toThrow(DecryptionFailedError);
            } else {
              expect(read(f.reader, stored)).toBe(f.value);
            }
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('within one query (one clock reading, the hot path), reads refuse exactly what a fresh query refuses', () => {
    // One keyring of its own, so evictions and restores here do not touch the other tests' keys.
    const kr = createKeyring({
      db: drizzle.mock(),
      platformKek: localKek({ key: randomBytes(32) }),
      cache: { maxAgeMs: 3_600_000 },
    });
    const who = ['t1', 't2', 't3'];
    const raw = new Map(who.map((w) => [w, randomBytes(32)]));
    const idOf = new Map(who.map((w) => [w, randomUUID()]));
    const restore = (w: string) => {
      const id = idOf.get(w)!;
      keysOf(kr).cache.put(id, uuidToBytes(id), w, 1, Buffer.from(raw.get(w)!), true);
    };
    for (const w of who) restore(w);
    const b: BuildContext = { keyring: kr, rowTenants: [], cursor: 0 };
    const wr = (w: string, value: string) =>
      inBuildContext(b, () =>
        scopeStorage.run({ tenantId: w }, () => t.name.mapToDriverValue(value)),
      ) as Buffer;
    const op = fc.oneof(
      fc.record({
        kind: fc.constant('read' as const),
        writer: fc.constantFrom(...who),
        value: fc.string({ maxLength: 40 }),
        flip: fc.option(fc.nat(), { nil: undefined }),
        asText: fc.boolean(),
      }),
      fc.record({ kind: fc.constant('evict' as const), tenant: fc.constantFrom(...who) }),
      fc.record({ kind: fc.constant('restore' as const), tenant: fc.constantFrom(...who) }),
    );
    fc.assert(
      fc.property(
        fc.constantFrom(...who, null),
        fc.array(op, { minLength: 1, maxLength: 40 }),
        (reader, ops) => {
          for (const w of who) restore(w);
          // Written first, while every key is cached (a write with an evicted key would wait for a load).
          const written = ops.map((o) => (o.kind === 'read' ? wr(o.writer, o.value) : undefined));
          const evicted = new Set<string>();
          const q: QueryContext = {
            keyring: kr,
            tenantId: reader,
            scoped: true,
            pending: [],
            now: Date.now(),
          };
          for (const [i, o] of ops.entries()) {
            if (o.kind === 'evict') {
              keysOf(kr).cache.evictTenant(o.tenant);
              evicted.add(o.tenant);
              continue;
            }
            if (o.kind === 'restore') {
              restore(o.tenant);
              evicted.delete(o.tenant);
              continue;
            }
            let stored: Buffer | string = written[i]!;
            let flippedId = false;
            if (o.flip !== undefined) {
              const bad = Buffer.from(stored);
              const bit = o.flip % (bad.length * 8);
              bad[bit >> 3]! ^= 1 << (bit & 7);
              flippedId = bit >> 3 >= 2 && bit >> 3 < 18;
              stored = bad;
            }
            // A bytea envelope handed over as text is not ciphertext for a bytea column: refused.
            if (o.asText) stored = stored.toString('latin1');
            let got: unknown;
            let threw: unknown;
            try {
              got = scopeStorage.run(q, () => t.name.mapFromDriverValue(stored));
            } catch (e) {
              threw = e;
            }
            if (threw !== undefined) {
              expect(threw).toBeInstanceOf(DecryptionFailedError);
              // Refused only for a reason: a flip, bytes as text, another tenant's key (when cached).
              expect(o.flip !== undefined || o.asText || (reader !== null && reader !== o.writer)).toBe(true);
              continue;
            }
            expect(o.asText).toBe(false);
            if (evicted.has(o.writer) || flippedId) {
              // Not cached (evicted, or an id no key has): never a value, the read waits for a load.
              expect(typeof got).not.toBe('string');
            } else {
              expect(o.flip).toBeUndefined();
              expect(reader === null || reader === o.writer).toBe(true);
              expect(got).toBe(o.value);
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('an evicted key is not served from the column memo: the read waits for a load instead', () => {
    const tenant = 'hooli';
    const id = randomUUID();
    const entry = keysOf(keyring).cache.put(id, uuidToBytes(id), tenant, 1, randomBytes(32), true);
    const stored = write(tenant, 'memo me');
    expect(read(tenant, stored)).toBe('memo me');
    keysOf(keyring).cache.evictTenant(tenant);
    expect(entry.evicted).toBe(true);
    const q: QueryContext = { keyring, tenantId: tenant, scoped: true, pending: [], now: Date.now() };
    const pending = scopeStorage.run(q, () => t.name.mapFromDriverValue(stored));
    expect(typeof pending).not.toBe('string');
    expect(q.pending).toHaveLength(1);
    // And the evicted entry derives no key any more (its bytes are zeroed).
    expect(() => open(keysOf(keyring).fieldKey(entry, 'public.patients.name'), stored)).toThrow();
  });
});
