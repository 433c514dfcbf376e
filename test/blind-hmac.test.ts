import { createHmac, randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlindKey, blindValue } from '../src/crypto/blind-hmac.ts';
import { DekCache } from '../src/keys/cache.ts';
import { blindKey } from '../src/keys/field-keys.ts';
import { ByokError } from '../src/errors.ts';

/** What the stored index value must be: `version ‖ HMAC-SHA256(key, input)[0 .. bytes)` (node:crypto). */
function reference(key: Uint8Array, version: number, input: Uint8Array, bytes: number): Buffer {
  const mac = createHmac('sha256', key).update(input).digest();
  return Buffer.concat([Buffer.from([version]), mac.subarray(0, bytes)]);
}

const hex = (s: string) => Buffer.from(s, 'hex');

// RFC 4231, section 4: HMAC-SHA-256 test cases 1-4, 6 and 7 (case 5 is a truncated output).
const RFC_4231: { key: Buffer; data: Buffer; mac: string }[] = [
  {
    key: Buffer.alloc(20, 0x0b),
    data: Buffer.from('Hi There'),
    mac: 'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7',
  },
  {
    key: Buffer.from('Jefe'),
    data: Buffer.from('what do ya want for nothing?'),
    mac: '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
  },
  {
    key: Buffer.alloc(20, 0xaa),
    data: Buffer.alloc(50, 0xdd),
    mac: '773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe',
  },
  {
    key: hex('0102030405060708090a0b0c0d0e0f10111213141516171819'),
    data: Buffer.alloc(50, 0xcd),
    mac: '82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b',
  },
  {
    key: Buffer.alloc(131, 0xaa),
    data: Buffer.from('Test Using Larger Than Block-Size Key - Hash Key First'),
    mac: '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54',
  },
  {
    key: Buffer.alloc(131, 0xaa),
    data: Buffer.from(
      'This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.',
    ),
    mac: '9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2',
  },
];

describe('blind index values (HMAC-SHA256 with a precomputed key state)', () => {
  it('match the RFC 4231 HMAC-SHA-256 vectors', () => {
    for (const v of RFC_4231) {
      const out = blindValue(BlindKey.of(v.key), 7, v.data, 32);
      expect(out[0]).toBe(7);
      expect(out.subarray(1).toString('hex')).toBe(v.mac);
    }
  });

  it('equal node:crypto createHmac for any key, input, version and length (property)', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 160 }),
        // lengths across the 55/56/64-byte padding boundaries and several blocks
        fc.uint8Array({ minLength: 0, maxLength: 300 }),
        fc.integer({ min: 1, max: 255 }),
        fc.integer({ min: 1, max: 32 }),
        (key, input, version, bytes) => {
          const k = BlindKey.of(key);
          expect(blindValue(k, version, input, bytes).equals(reference(key, version, input, bytes))).toBe(
            true,
          );
        },
      ),
      { numRuns: 500 },
    );
  });

  it('a key computes any number of values: no value changes its state (interleaved, property)', () => {
    const raw = randomBytes(32);
    const k = BlindKey.of(raw);
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 120 }), { minLength: 1, maxLength: 20 }), (inputs) => {
        const first = inputs.map((x) => blindValue(k, 1, x, 16));
        const again = [...inputs].reverse().map((x) => blindValue(k, 1, x, 16));
        again.reverse();
        for (let i = 0; i < inputs.length; i++) {
          expect(first[i]!.equals(again[i]!)).toBe(true);
          expect(first[i]!.equals(reference(raw, 1, inputs[i]!, 16))).toBe(true);
        }
      }),
      { numRuns: 100 },
    );
  });

  it('values of several keys interleaved, inputs across block sizes: each equals its reference (property)', () => {
    // One working state serves every key: nothing of a previous key or input may carry over.
    const raws = [randomBytes(32), randomBytes(32), randomBytes(32)];
    const keys = raws.map((r) => BlindKey.of(r));
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.uint8Array({ maxLength: 200 })), {
          minLength: 1,
          maxLength: 30,
        }),
        (steps) => {
          for (const [which, input] of steps) {
            expect(blindValue(keys[which]!, 3, input, 32).equals(reference(raws[which]!, 3, input, 32))).toBe(
              true,
            );
          }
        },
      ),
      { numRuns: 200 },
    );
    // a destroyed key in between changes nothing for the others
    const gone = BlindKey.of(randomBytes(32));
    gone.destroy();
    expect(() => blindValue(gone, 1, Buffer.from('x'), 16)).toThrow(ByokError);
    expect(
      blindValue(keys[0]!, 1, Buffer.from('x'), 16).equals(reference(raws[0]!, 1, Buffer.from('x'), 16)),
    ).toBe(true);
  });

  it('different keys give different values for the same input', () => {
    const input = Buffer.from('ada@example.com');
    expect(blindValue(BlindKey.of(randomBytes(32)), 1, input, 16)).not.toEqual(
      blindValue(BlindKey.of(randomBytes(32)), 1, input, 16),
    );
  });

  it('keeps no copy of the raw key bytes, and shows nothing through inspect, JSON or properties', () => {
    const raw = randomBytes(32);
    const k = BlindKey.of(raw);
    const copy = Buffer.from(raw);
    raw.fill(0); // the caller zeroes its bytes: the key still works from its own state
    expect(blindValue(k, 1, Buffer.from('x'), 16).equals(reference(copy, 1, Buffer.from('x'), 16))).toBe(
      true,
    );
    expect(inspect(k, { showHidden: true, depth: 20, getters: true })).toMatch(/^BlindKey \{/);
    expect(inspect(k, { showHidden: true, depth: 20 })).not.toContain(copy.toString('hex').slice(0, 16));
    expect(JSON.stringify(k)).toBe('{}');
    expect(Reflect.ownKeys(k)).toEqual([]);
  });

  it('destroy() zeroes the state: any later use is a typed error, never a value', () => {
    const k = BlindKey.of(randomBytes(32));
    blindValue(k, 1, Buffer.from('before'), 16);
    k.destroy();
    expect(k.destroyed).toBe(true);
    expect(() => blindValue(k, 1, Buffer.from('after'), 16)).toThrow(ByokError);
    expect(() => blindValue(k, 1, Buffer.from('after'), 16)).toThrow(/evicted while in use; retry/);
    k.destroy(); // idempotent
  });

  it('the key cache destroys a data key’s blind index keys when it evicts the data key', () => {
    const cache = new DekCache({ maxEntries: 1, maxAgeMs: 60_000 });
    const idBytes = randomBytes(16);
    const id = [...idBytes].map((b) => b.toString(16).padStart(2, '0')).join('');
    const entry = cache.put(id, idBytes, 'tenant-a', 1, randomBytes(32), true);
    const k = blindKey(entry, 'blind-index/v1', 'public.users.email_idx');
    expect(blindKey(entry, 'blind-index/v1', 'public.users.email_idx')).toBe(k); // memoized
    expect(k.destroyed).toBe(false);
    const other = randomBytes(16);
    cache.put('other', other, 'tenant-b', 1, randomBytes(32), true); // evicts the first (LRU, size 1)
    expect(entry.evicted).toBe(true);
    expect(k.destroyed).toBe(true);
    expect(() => blindKey(entry, 'blind-index/v1', 'public.users.email_idx')).toThrow(ByokError);
  });
});
