import { randomBytes, randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { uuidToBytes } from '../src/crypto/envelope.ts';
import { DekCache, dekMaterial } from '../src/keys/cache.ts';

/**
 * The data key cache's bound: at most `maxEntries` keys, the least recently used evicted first
 * (and its bytes zeroed). Checked against a reference model over random sequences of inserts and
 * reads (by id, by tenant, by envelope).
 */
describe('data key cache: LRU bound', () => {
  it('evicts exactly the least recently used key, whatever the sequence of puts and reads', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.array(
          fc.record({
            op: fc.constantFrom('put', 'get', 'active', 'envelope'),
            key: fc.integer({ min: 0, max: 9 }),
          }),
          { maxLength: 80 },
        ),
        (maxEntries, ops) => {
          const cache = new DekCache({ maxEntries, maxAgeMs: 1e12 });
          const ids = Array.from({ length: 10 }, () => randomUUID());
          const envelopes = ids.map((id) => {
            const env = Buffer.alloc(64);
            env[0] = 1;
            uuidToBytes(id).copy(env, 2);
            return env;
          });
          // Reference: ids in least-recently-used-first order.
          let model: number[] = [];
          const touch = (k: number) => {
            model = [...model.filter((x) => x !== k), k];
          };
          const entries = new Map<number, ReturnType<DekCache['put']>>();
          let clock = 1_000;
          const realNow = Date.now;
          Date.now = () => clock;
          try {
            for (const { op, key } of ops) {
              // Recency is judged by the clock (one reading per query): every step at a new time.
              clock++;
              if (op === 'put') {
                const raw = randomBytes(32);
                entries.set(key, cache.put(ids[key]!, uuidToBytes(ids[key]!), `t${key}`, 1, raw, true));
                touch(key);
                if (model.length > maxEntries) {
                  const gone = model.shift()!;
                  expect(entries.get(gone)!.evicted).toBe(true);
                  expect(dekMaterial(entries.get(gone)!).raw.equals(Buffer.alloc(32))).toBe(true);
                }
              } else {
                const got =
                  op === 'get'
                    ? cache.get(ids[key]!)
                    : op === 'active'
                      ? cache.active(`t${key}`)
                      : cache.lookupEnvelope(envelopes[key]!, clock);
                if (model.includes(key)) {
                  expect(got).toBe(entries.get(key));
                  touch(key);
                } else {
                  expect(got).toBeUndefined();
                }
              }
              expect(cache.size).toBe(model.length);
            }
          } finally {
            Date.now = realNow;
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('50,000 inserts through a 10,000-key cache keep 10,000 and evict the oldest', () => {
    const cache = new DekCache({ maxEntries: 10_000, maxAgeMs: 60_000 });
    const first = cache.put(randomUUID(), randomBytes(16), 't-first', 1, randomBytes(32), true);
    for (let i = 1; i < 50_000; i++)
      cache.put(randomUUID(), randomBytes(16), `t${i}`, 1, randomBytes(32), true);
    expect(cache.size).toBe(10_000);
    expect(first.evicted).toBe(true);
  });
});
