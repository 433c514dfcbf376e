import { randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { contextBytes, deriveFieldKey, idEquals, idWordsOf, keyOf, open, seal } from '../src/crypto/aead.ts';
import {
  bigintCodec,
  booleanCodec,
  bytesCodec,
  integerCodec,
  jsonCodec,
  numericCodec,
  textCodec,
  timestampCodec,
} from '../src/crypto/codecs.ts';
import {
  bytesToUuid,
  envelopeDekId,
  looksLikeEnvelope,
  OVERHEAD,
  toBytes,
  uuidToBytes,
} from '../src/crypto/envelope.ts';
import { writeIv } from '../src/crypto/iv-pool.ts';
import { PendingRead, PendingWrite } from '../src/drizzle/placeholders.ts';
import {
  ByokConfigError,
  ByokError,
  DecryptionFailedError,
  isByokError,
  KeyAccessDeniedError,
  localKek,
  PlaceholderLeakError,
} from '../src/index.ts';

const dekId = '3f0b8e4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b';
const dek = randomBytes(32);
const fk = deriveFieldKey(dek, uuidToBytes(dekId), 'acme', 'public.patients.name');

describe('AES-256-GCM field envelope', () => {
  it('round-trips, with the documented layout', () => {
    for (const size of [0, 1, 16, 256, 4096, 70_000]) {
      const pt = randomBytes(size);
      const env = seal(fk, pt);
      expect(env.length).toBe(OVERHEAD + size);
      expect(env[0]).toBe(1);
      expect(env[1]).toBe(0);
      expect(envelopeDekId(env)).toBe(dekId);
      expect(looksLikeEnvelope(env)).toBe(true);
      expect(open(fk, env).equals(pt)).toBe(true);
    }
  });

  it('never repeats an IV (pooled CSPRNG, each slice used once)', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 5000; i++) seen.add(seal(fk, Buffer.from('x')).subarray(18, 30).toString('hex'));
    expect(seen.size).toBe(5000);
    const a = Buffer.alloc(12);
    const b = Buffer.alloc(12);
    writeIv(a, 0);
    writeIv(b, 0);
    expect(a.equals(b)).toBe(false);
  });

  it('every flipped bit of the envelope fails with the one generic error', () => {
    const env = seal(fk, Buffer.from('sensitive value'));
    for (let i = 0; i < env.length; i++) {
      for (const bit of [0x01, 0x80]) {
        const bad = Buffer.from(env);
        bad[i]! ^= bit;
        let err: unknown;
        try {
          open(fk, bad);
        } catch (e) {
          err = e;
        }
        expect(err, `byte ${i}`).toBeInstanceOf(DecryptionFailedError);
        expect((err as DecryptionFailedError).message).toBe('decryption operation failed');
        expect((err as DecryptionFailedError).code).toBe('ERR_BYOK_DECRYPTION_FAILED');
      }
    }
    for (const len of [0, 10, OVERHEAD - 1, env.length - 1])
      expect(() => open(fk, env.subarray(0, len))).toThrow(DecryptionFailedError);
  });

  it('a shortened or short-tagged envelope never opens: the tag is always its full last 16 bytes (property)', () => {
    // open takes the tag from the envelope's framing (no authTagLength option): a GCM tag cut to
    // 4, 8 or 12 bytes, or any truncation, must still fail, never authenticate a shorter tag.
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 1, max: 16 }), (pt, cut) => {
        const env = seal(fk, pt);
        expect(open(fk, env).equals(Buffer.from(pt))).toBe(true);
        expect(() => open(fk, env.subarray(0, env.length - cut))).toThrow(DecryptionFailedError);
        // the same body with a short tag that is a prefix of the real one
        for (const tagLen of [4, 8, 12]) {
          const short = Buffer.concat([
            env.subarray(0, env.length - 16),
            env.subarray(env.length - 16, env.length - 16 + tagLen),
          ]);
          expect(() => open(fk, short)).toThrow(DecryptionFailedError);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('idEquals: true exactly when the 16 id bytes at the offset are equal; a buffer too short is never equal (property)', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.uint8Array({ minLength: 0, maxLength: 40 }),
        fc.integer({ min: 0, max: 8 }),
        (id, buf, at) => {
          const b = Buffer.from(buf);
          const words = idWordsOf(id);
          const same = b.length >= at + 16 && b.subarray(at, at + 16).equals(Buffer.from(id));
          expect(idEquals(b, at, words)).toBe(same);
          // the id itself, placed at the offset, is equal; one flipped bit is not
          const placed = Buffer.concat([Buffer.alloc(at), Buffer.from(id)]);
          expect(idEquals(placed, at, words)).toBe(true);
          placed[at + (buf.length % 16)]! ^= 1;
          expect(idEquals(placed, at, words)).toBe(false);
          // all-zero ids and buffers cut short: never equal
          expect(idEquals(Buffer.alloc(at + 15), at, idWordsOf(new Uint8Array(16)))).toBe(false);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('binds tenant, table and column (AAD and key derivation), and an optional row key', () => {
    const env = seal(fk, Buffer.from('v'));
    const otherTenant = deriveFieldKey(dek, uuidToBytes(dekId), 'globex', 'public.patients.name');
    const otherColumn = deriveFieldKey(dek, uuidToBytes(dekId), 'acme', 'public.patients.email');
    const otherTable = deriveFieldKey(dek, uuidToBytes(dekId), 'acme', 'public.visits.name');
    for (const k of [otherTenant, otherColumn, otherTable])
      expect(() => open(k, env)).toThrow(DecryptionFailedError);
    const rowBound = seal(fk, Buffer.from('v'), Buffer.from('row-1'));
    expect(rowBound[1]).toBe(1);
    expect(open(fk, rowBound, Buffer.from('row-1')).toString()).toBe('v');
    expect(() => open(fk, rowBound, Buffer.from('row-2'))).toThrow(DecryptionFailedError);
    expect(() => open(fk, rowBound)).toThrow(DecryptionFailedError);
    expect(() => open(fk, env, Buffer.from('row-1'))).toThrow(DecryptionFailedError);
    // context encoding is unambiguous: ("ab","c") and ("a","bc") differ
    expect(contextBytes('ab', 'c').equals(contextBytes('a', 'bc'))).toBe(false);
  });

  it('derives distinct subkeys per context and never uses the DEK directly', () => {
    const k1 = deriveFieldKey(dek, uuidToBytes(dekId), 'acme', 'a');
    const k2 = deriveFieldKey(dek, uuidToBytes(dekId), 'acme', 'b');
    expect(keyOf(k1).export().equals(keyOf(k2).export())).toBe(false);
    expect(keyOf(k1).export().equals(dek)).toBe(false);
  });

  it('parses bytes as every driver returns them: Buffer, Uint8Array, and \\x hex text', () => {
    const env = seal(fk, Buffer.from('hex'));
    expect(toBytes(env)).toBe(env);
    expect(toBytes(new Uint8Array(env))!.equals(env)).toBe(true);
    expect(toBytes(`\\x${env.toString('hex')}`)!.equals(env)).toBe(true);
    expect(toBytes('\\xzz')).toBeUndefined();
    expect(toBytes('plain')).toBeUndefined();
    expect(bytesToUuid(uuidToBytes(dekId))).toBe(dekId);
    expect(() => uuidToBytes('not-a-uuid')).toThrow(TypeError);
  });
});

describe('value codecs', () => {
  it('round-trip their types', () => {
    const cases: [{ encode(v: never): Uint8Array; decode(b: Buffer): unknown }, unknown][] = [
      [textCodec, 'héllo ✓'],
      [textCodec, ''],
      [jsonCodec(), { a: [1, 'x', null], b: { c: true } }],
      [jsonCodec(), 'just a string'],
      [integerCodec, -9007199254740991],
      [bigintCodec, -(2n ** 63n)],
      [bigintCodec, 2n ** 63n - 1n],
      [numericCodec, '-12345678901234567890.000001'],
      [booleanCodec, false],
      [timestampCodec, new Date('2024-02-29T12:34:56.789Z')],
    ];
    for (const [codec, v] of cases) expect(codec.decode(Buffer.from(codec.encode(v as never)))).toEqual(v);
    expect(Buffer.from(bytesCodec.decode(Buffer.from([1, 2, 3])))).toEqual(Buffer.from([1, 2, 3]));
  });

  it('reject wrong input types, naming the type but never the value', () => {
    const bad: [{ encode(v: never): Uint8Array }, unknown][] = [
      [textCodec, 42],
      [integerCodec, 1.5],
      [integerCodec, 2 ** 60],
      [bigintCodec, 2n ** 64n],
      [numericCodec, '12,50'],
      [numericCodec, 'secret-not-a-number'],
      [booleanCodec, 'true'],
      [timestampCodec, new Date('nope')],
      [bytesCodec, 'abc'],
      [jsonCodec(), undefined],
    ];
    for (const [codec, v] of bad) {
      let msg = '';
      try {
        codec.encode(v as never);
      } catch (e) {
        msg = (e as Error).message;
      }
      expect(msg).toMatch(/^expected /);
      expect(msg).not.toContain('secret-not-a-number');
    }
  });
});

describe('errors and redaction', () => {
  it('every error has a stable code, on the class and the instance', () => {
    expect(new KeyAccessDeniedError('x').code).toBe('ERR_BYOK_KEY_ACCESS_DENIED');
    expect(KeyAccessDeniedError.code).toBe('ERR_BYOK_KEY_ACCESS_DENIED');
    expect(new KeyAccessDeniedError('x')).toBeInstanceOf(ByokError);
    expect(new KeyAccessDeniedError('x').name).toBe('KeyAccessDeniedError');
    expect(isByokError(new ByokConfigError('x'))).toBe(true);
    expect(isByokError({ code: 'ERR_BYOK_X' })).toBe(true);
    expect(isByokError(new Error('x'))).toBe(false);
    expect(new DecryptionFailedError({ column: 'patients.name' }).message).toBe(
      'decryption operation failed (column patients.name)',
    );
  });

  it('placeholders refuse every way of being serialized and redact themselves', () => {
    const state = {
      codec: textCodec,
      context: 'public.t.c',
      label: 't.c',
      storage: 'bytea',
      mode: 'strict',
      memo: undefined,
    } as never;
    const w = new PendingWrite('acme', state, Buffer.from('top secret plaintext'));
    expect(() => JSON.stringify({ w })).toThrow(PlaceholderLeakError);
    expect(() => String(w)).toThrow(PlaceholderLeakError);
    expect(() => `${w}`).toThrow(PlaceholderLeakError);
    expect(() => (w as unknown as number) + 1).toThrow(PlaceholderLeakError);
    expect(() => (w as unknown as { toPostgres(): unknown }).toPostgres()).toThrow(PlaceholderLeakError);
    const shown = inspect({ w }, { depth: 5, showHidden: true });
    expect(shown).not.toContain('top secret');
    expect(shown).toContain('[drizzle-byok sealed t.c]');
    expect(Object.keys(w)).not.toContain('plaintext');
    const r = new PendingRead(Buffer.alloc(46), dekId, state);
    expect(() => r.value()).toThrow(PlaceholderLeakError);
    expect(() => JSON.stringify(r)).toThrow(PlaceholderLeakError);
  });

  it('localKek validates its key with a clear message and never prints it', async () => {
    expect(() => localKek({ key: '' })).toThrow(/needs 32 random bytes.*got nothing/);
    expect(() => localKek({ key: 'abc' })).toThrow(/read as hex: 3 hex digits/);
    expect(() => localKek({ key: 'abcz' })).toThrow(/read as base64: 4 characters decode to 3 bytes/);
    expect(() => localKek({ key: '%%%' })).toThrow(/neither hex .* nor base64/);
    expect(() => localKek({ key: Buffer.alloc(16) })).toThrow(/got 16 bytes/);
    expect(() => localKek({ key: Buffer.alloc(32) })).toThrow(/repeated byte/);
    expect(() => localKek({ key: 42 as never })).toThrow(ByokConfigError);
    const keyText = randomBytes(32).toString('base64');
    const kek = localKek({ key: keyText });
    const hex = Buffer.from(keyText, 'base64').toString('hex');
    for (const shown of [
      inspect(kek, { showHidden: true, depth: 9 }),
      JSON.stringify(kek),
      JSON.stringify(kek.toConfig()),
    ]) {
      expect(shown).not.toContain(keyText);
      expect(shown).not.toContain(hex);
      expect(shown).toContain(kek.keyRef);
    }
    expect(localKek({ key: hex }).keyRef).toBe(kek.keyRef);
    const wrapped = await kek.wrap(dek, { tenantId: 'acme', dekId });
    expect(Buffer.from(await kek.unwrap(wrapped, { tenantId: 'acme', dekId })).equals(dek)).toBe(true);
    await expect(kek.unwrap(wrapped, { tenantId: 'globex', dekId })).rejects.toThrow(
      /could not be unwrapped/,
    );
  });
});
