import { randomBytes } from 'node:crypto';
import type { Kek } from '../../src/index.ts';
import { localKek } from '../../src/index.ts';

/** A real KEK (localKek) that counts its calls: the keyring under test is not mocked. */
export interface CountingKek extends Kek {
  readonly calls: { wrap: number; unwrap: number };
  /** Tenant of each unwrap, in order (the KMS call a tenant's CloudTrail would show). */
  readonly unwrapTenants: string[];
  /** Every data key this KEK wrapped (to look for key bytes where they must not be). */
  readonly wrapped: Buffer[];
  reset(): void;
}

export function countingKek(inner: Kek = localKek({ key: randomBytes(32) })): CountingKek {
  const calls = { wrap: 0, unwrap: 0 };
  const unwrapTenants: string[] = [];
  const wrapped: Buffer[] = [];
  return {
    kind: inner.kind,
    keyRef: inner.keyRef,
    calls,
    unwrapTenants,
    wrapped,
    reset() {
      calls.wrap = 0;
      calls.unwrap = 0;
      unwrapTenants.length = 0;
    },
    wrap(dek, ctx) {
      calls.wrap++;
      wrapped.push(Buffer.from(dek));
      return inner.wrap(dek, ctx);
    },
    unwrap(wrapped, ctx) {
      calls.unwrap++;
      unwrapTenants.push(ctx.tenantId);
      return inner.unwrap(wrapped, ctx);
    },
    describe: () => inner.describe(),
    toConfig: () => inner.toConfig(),
  };
}
