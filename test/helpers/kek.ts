import { randomBytes } from 'node:crypto';
import type { Kek } from '../../src/index.ts';
import { localKek } from '../../src/index.ts';

/** A real KEK (localKek) that counts its calls: the keyring under test is not mocked. */
export interface CountingKek extends Kek {
  readonly calls: { wrap: number; unwrap: number };
  reset(): void;
}

export function countingKek(inner: Kek = localKek({ key: randomBytes(32) })): CountingKek {
  const calls = { wrap: 0, unwrap: 0 };
  return {
    kind: inner.kind,
    keyRef: inner.keyRef,
    calls,
    reset() {
      calls.wrap = 0;
      calls.unwrap = 0;
    },
    wrap(dek, ctx) {
      calls.wrap++;
      return inner.wrap(dek, ctx);
    },
    unwrap(wrapped, ctx) {
      calls.unwrap++;
      return inner.unwrap(wrapped, ctx);
    },
    describe: () => inner.describe(),
    toConfig: () => inner.toConfig(),
  };
}
