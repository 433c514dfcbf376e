import { inspect } from 'node:util';
import { Placeholder, is } from 'drizzle-orm';
import { blindValue } from '../crypto/blind-hmac.ts';
import { placeholderName } from '../drizzle/chunks.ts';
import { ByokConfigError, NoTenantError, PlaceholderLeakError, TenantMismatchError } from '../errors.ts';
import type { Keyring } from '../keys/keyring.ts';
import { scopeStorage } from '../scope.ts';
import { type BlindIndexState, indexInput } from './column.ts';
import { registryFor } from './keys.ts';

/** A looked-up value: given, or the name of the placeholder that carries it. */
export type LookupValue = { value: unknown } | { placeholder: string };

// -----------------------------------------------------------------------------------------------
// Sealed values: what stands for an index value until it is computed

/** Never serializable: every conversion throws, `util.inspect` shows a redacted tag. */
abstract class BlindSealed {
  abstract readonly index: BlindIndexState;

  toJSON(): never {
    throw new PlaceholderLeakError(`a blind index value of ${this.index.label} was about to be serialized`);
  }

  toString(): never {
    throw new PlaceholderLeakError(
      `a blind index value of ${this.index.label} was about to be turned into text`,
    );
  }

  [Symbol.toPrimitive](): never {
    throw new PlaceholderLeakError(
      `a blind index value of ${this.index.label} was about to be turned into a primitive`,
    );
  }

  toPostgres(): never {
    throw new PlaceholderLeakError(
      `a blind index value of ${this.index.label} reached the driver uncomputed`,
    );
  }

  [inspect.custom](): string {
    return `[drizzle-byok sealed blind index ${this.index.label}]`;
  }
}

/** In the SQL tree of an insert or update: the index value of one written source value. */
export class BlindWriteSource extends BlindSealed {
  readonly index: BlindIndexState;
  readonly keyring: Keyring;
  readonly rowTenant: string | undefined;
  readonly tenantColumn: string | undefined;
  readonly placeholder: string | undefined;
  readonly #value: unknown;

  constructor(
    keyring: Keyring,
    index: BlindIndexState,
    value: unknown,
    rowTenant: string | undefined,
    tenantColumn: string | undefined,
  ) {
    super();
    this.keyring = keyring;
    this.index = index;
    this.rowTenant = rowTenant;
    this.tenantColumn = tenantColumn;
    this.placeholder = is(value, Placeholder) ? placeholderName(value) : undefined;
    this.#value = value;
  }

  /** @internal */
  value(): unknown {
    return this.#value;
  }
}

type PendingKind = 'write' | 'lookup' | 'lookup-set' | 'tenant';

/** In query params: an index value (or the lookup's tenant) computed by the middleware before execution. */
export class PendingBlind extends BlindSealed {
  readonly kind: PendingKind;
  readonly index: BlindIndexState;
  readonly tenantColumn: string | undefined;
  /** Writes: the row's tenant when known when the statement was built. */
  readonly tenantId: string | undefined;
  readonly placeholder: string | undefined;
  /** Lookups: which live key version (0: active, 1: the pending or retiring one; NULL when none). */
  readonly slot: number;
  readonly allowLossy: boolean;
  /** `lookup-set`: the values looked up (or their placeholders), matched under every live version. */
  readonly items: readonly LookupValue[];
  readonly #value: unknown;

  constructor(
    kind: PendingKind,
    index: BlindIndexState,
    init: {
      tenantColumn: string | undefined;
      tenantId?: string;
      value?: unknown;
      placeholder?: string;
      slot?: number;
      allowLossy?: boolean;
      items?: readonly LookupValue[];
    },
  ) {
    super();
    this.kind = kind;
    this.index = index;
    this.tenantColumn = init.tenantColumn;
    this.tenantId = init.tenantId;
    this.placeholder = init.placeholder;
    this.slot = init.slot ?? 0;
    this.allowLossy = init.allowLossy ?? false;
    this.items = init.items ?? [];
    this.#value = init.value;
  }

  /** @internal */
  value(): unknown {
    return this.#value;
  }
}

export function isBlindPending(p: unknown): boolean {
  return p instanceof PendingBlind;
}

/** Encoder of lookup and tenant params: they stay sealed until execution (the tenant is known then). */
export const LOOKUP_ENCODER = { mapToDriverValue: (v: unknown) => v };

/** Encoder of written index values: computed now when the key is cached, else sealed until execution. */
export const WRITE_ENCODER = {
  mapToDriverValue(ws: unknown): unknown {
    if (!(ws instanceof BlindWriteSource)) {
      throw new ByokConfigError('internal: unexpected blind index write value');
    }
    const base = { tenantColumn: ws.tenantColumn };
    if (ws.placeholder !== undefined) {
      return new PendingBlind('write', ws.index, {
        ...base,
        tenantId: ws.rowTenant,
        placeholder: ws.placeholder,
      });
    }
    const tenantId = writeTenant(ws.index, ws.rowTenant);
    const value = ws.value();
    const reg = registryFor(ws.keyring);
    const state = reg.fresh(tenantId, ws.index.context);
    if (state !== undefined) {
      const key = reg.hotKey(state, state.active);
      if (key !== undefined) {
        ws.keyring.countHotHit();
        const v = state.active;
        return blindValue(key, v.version, indexInput(ws.index, v.params, value), v.params.bytes);
      }
    }
    return new PendingBlind('write', ws.index, { ...base, tenantId, value });
  },
};

export function writeTenant(index: BlindIndexState, rowTenant: string | undefined): string {
  const scoped = scopeStorage.getStore()?.tenantId;
  if (rowTenant !== undefined) {
    if (typeof scoped === 'string' && scoped !== rowTenant) {
      throw new TenantMismatchError(
        `a row for tenant ${rowTenant} was written to ${index.label} inside the scope of tenant ${scoped}`,
        { tenantId: scoped },
      );
    }
    return rowTenant;
  }
  if (typeof scoped === 'string') return scoped;
  throw new NoTenantError(
    `writing blind index ${index.label} needs a tenant: run it inside keyring.withTenant(tenantId, ...)` +
      (scoped === null ? ' (withAnyTenant allows reads only), or give the row a tenant column' : ''),
  );
}
