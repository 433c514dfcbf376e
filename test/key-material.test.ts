import { createSecretKey } from 'node:crypto';
import { inspect } from 'node:util';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as api from '../src/index.ts';
import { DecryptionFailedError, withTenant } from '../src/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

/** Every way the raw 32 bytes of a key could be spelled in a dump. */
function spellings(key: Buffer): string[] {
  return [
    key.toString('hex'),
    key.toString('base64'),
    key.toString('base64url'),
    JSON.stringify([...key]).slice(1, -1),
    [...key].join(', '),
    // util.inspect of a Buffer: <Buffer 0a 1b ...> (first bytes)
    [...key.subarray(0, 12)].map((b) => b.toString(16).padStart(2, '0')).join(' '),
  ];
}

/** Walks every own property (string and symbol, enumerable or not) reachable from `root`. */
function reachable(root: unknown, skip: unknown[] = [], limit = 50_000): unknown[] {
  const seen = new Set<unknown>(skip);
  const out: unknown[] = [];
  const stack = [root];
  while (stack.length > 0 && seen.size < limit) {
    const v = stack.pop();
    if (v === null || (typeof v !== 'object' && typeof v !== 'function') || seen.has(v)) continue;
    seen.add(v);
    out.push(v);
    if (v instanceof Map) for (const [k, x] of v) stack.push(k, x);
    if (v instanceof Set) for (const x of v) stack.push(x);
    // A typed array's own keys are its indices (primitives, checked by containsKey through its
    // bytes): listing those of a large one throws a RangeError. Its symbol keys are walked.
    const keysOf = ArrayBuffer.isView(v) ? Object.getOwnPropertySymbols(v) : Reflect.ownKeys(v as object);
    for (const k of keysOf) {
      const d = Object.getOwnPropertyDescriptor(v, k);
      if (d !== undefined && 'value' in d) stack.push(d.value);
    }
    stack.push(Object.getPrototypeOf(v));
  }
  return out;
}

function containsKey(values: unknown[], keys: Buffer[]): boolean {
  for (const v of values) {
    if (ArrayBuffer.isView(v) && Object.getPrototypeOf(v) !== null && v !== Buffer.prototype) {
      let b: Buffer;
      try {
        b = Buffer.from(v.buffer, v.byteOffset, v.byteLength);
      } catch {
        continue; // a typed array prototype, not a view
      }
      for (const k of keys) if (b.includes(k)) return true;
    }
    if (typeof v === 'object' && v !== null && typeof (v as { export?: unknown }).export === 'function') {
      // a KeyObject: its bytes are one export() away
      if ((v as { type?: unknown }).type === 'secret') {
        return true;
      }
    }
  }
  return false;
}

describe('no key bytes reachable from the public API', () => {
  let e: EncryptedDb;
  const T = uniqueTenant('keys');
  const B = uniqueTenant('keys-b');

  beforeAll(async () => {
    e = await setupEncryptedDb(MAIN_DRIVER);
    await withTenant(T, () =>
      e.db.insert(e.s.patients).values({ tenantId: T, name: 'Ada', email: 'a@x.io' }),
    );
    await withTenant(B, () => e.db.insert(e.s.patients).values({ tenantId: B, name: 'Bo' }));
    await withTenant(T, () => e.db.select().from(e.s.patients).where(eq(e.s.patients.tenantId, T)));
  });
  afterAll(() => e?.close());

  it('the keyring exposes no data key accessors', () => {
    const k = e.keyring as unknown as Record<string, unknown>;
    expect(e.keyring.platformKeyRef).toBe(e.kek.keyRef);
    for (const name of [
      'getDek',
      'getActiveDek',
      'getDekVersion',
      'fieldKey',
      'derivedKey',
      'blindKey',
      'cache',
      // what unwraps data keys or opens KEK credentials is internal too
      'platformKek',
      'platformKekFor',
      'kekFor',
      'openSecret',
      'sealSecret',
      'createDek',
    ]) {
      expect(k[name]).toBeUndefined();
    }
  });

  it('inspect (showHidden), JSON and property walks of the keyring and columns show no key bytes', () => {
    const keys = e.kek.wrapped;
    expect(keys.length).toBeGreaterThanOrEqual(2);
    // the walk finds key bytes wherever they hide (control: the check below can fail)
    const planted = { a: new Map([['x', { deep: new Set([Buffer.concat([Buffer.alloc(9), keys[0]!])]) }]]) };
    expect(containsKey(reachable(planted), keys)).toBe(true);
    expect(
      containsKey(reachable({ big: Buffer.alloc(20_000_000), k: createSecretKey(keys[0]!) }), keys),
    ).toBe(true);
    const roots: unknown[] = [e.keyring, e.s.patients, e.s.patients.name, e.s.patients.email, e.db, api];
    for (const root of roots) {
      const dumps = [
        inspect(root, { showHidden: true, depth: 12, getters: true }),
        inspect(root, { depth: Number.POSITIVE_INFINITY }),
      ];
      try {
        dumps.push(JSON.stringify(root) ?? '');
      } catch {
        // circular structures cannot be serialized at all
      }
      for (const d of dumps) for (const k of keys) for (const s of spellings(k)) expect(d).not.toContain(s);
      // the test's counting KEK records the keys it wrapped: it is the test's, not the library's
      expect(containsKey(reachable(root, [e.kek.wrapped]), keys)).toBe(false);
    }
  });

  it('errors carry no key bytes, and the public API has no function returning key entries', async () => {
    const keys = e.kek.wrapped;
    await e.tdb.raw(`update "${e.s.name}".patients set name = $1 where tenant_id = $2`, [
      Buffer.alloc(60, 1),
      T,
    ]);
    const err = await withTenant(T, () =>
      e.db.select().from(e.s.patients).where(eq(e.s.patients.tenantId, T)),
    ).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(err).toBeInstanceOf(DecryptionFailedError);
    expect(containsKey(reachable(err, [e.kek.wrapped]), keys)).toBe(false);
    for (const s of keys.flatMap(spellings))
      expect(inspect(err, { showHidden: true, depth: 10 })).not.toContain(s);
  });
});
