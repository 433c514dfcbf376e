/**
 * Value codecs: how a column's app-side value becomes the bytes that are encrypted, and back.
 * Null is never encrypted (it stays SQL NULL); every codec validates its input and names the
 * column in its error, never the value.
 */
export interface Codec<T> {
  /** Short name used in errors and docs (`text`, `json`, ...). */
  readonly name: string;
  /** Throws TypeError (message without the value) when `value` is not a valid T. */
  encode(value: T): Uint8Array;
  decode(bytes: Buffer): T;
}

export const textCodec: Codec<string> = {
  name: 'text',
  encode(value) {
    if (typeof value !== 'string') throw new TypeError(`expected a string, got ${describe(value)}`);
    assertWellFormed(value);
    return Buffer.from(value, 'utf8');
  },
  decode: (b) => b.toString(), // UTF-8; without arguments Buffer#toString skips its encoding lookup
};

/**
 * Refuses a string with a lone UTF-16 surrogate: UTF-8 cannot encode it, and encoding would
 * silently turn it into U+FFFD (the value would not come back as given).
 */
export function assertWellFormed(value: string): void {
  if (!(value as unknown as { isWellFormed(): boolean }).isWellFormed()) {
    throw new TypeError(
      'the string contains a lone UTF-16 surrogate (not valid Unicode); it cannot be stored exactly. ' +
        'Fix the value (e.g. value.toWellFormed() if replacing it by U+FFFD is acceptable)',
    );
  }
}

export function jsonCodec<T>(): Codec<T> {
  return {
    name: 'json',
    encode(value) {
      if (value === undefined || typeof value === 'function' || typeof value === 'symbol') {
        throw new TypeError(`expected a JSON value, got ${describe(value)}`);
      }
      const s = JSON.stringify(value);
      if (s === undefined) throw new TypeError(`expected a JSON value, got ${describe(value)}`);
      return Buffer.from(s, 'utf8');
    },
    decode: (b) => JSON.parse(b.toString()) as T, // UTF-8
  };
}

export const integerCodec: Codec<number> = {
  name: 'integer',
  encode(value) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
      throw new TypeError(`expected a safe integer, got ${describe(value)}`);
    }
    const b = Buffer.allocUnsafe(8);
    b.writeDoubleBE(value, 0);
    return b;
  },
  decode(b) {
    if (b.length !== 8) throw new TypeError('integer payload must be 8 bytes');
    return b.readDoubleBE(0);
  },
};

export const bigintCodec: Codec<bigint> = {
  name: 'bigint',
  encode(value) {
    if (typeof value !== 'bigint' || value < -(2n ** 63n) || value >= 2n ** 63n) {
      throw new TypeError(`expected a 64-bit bigint, got ${describe(value)}`);
    }
    const b = Buffer.allocUnsafe(8);
    b.writeBigInt64BE(value, 0);
    return b;
  },
  decode(b) {
    if (b.length !== 8) throw new TypeError('bigint payload must be 8 bytes');
    return b.readBigInt64BE(0);
  },
};

const NUMERIC = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(Infinity|NaN)$/;

/** Arbitrary-precision decimal kept as its string form (as Drizzle's `numeric` does). */
export const numericCodec: Codec<string> = {
  name: 'numeric',
  encode(value) {
    if (typeof value !== 'string' || !NUMERIC.test(value)) {
      throw new TypeError(`expected a numeric string such as "12.50", got ${describe(value)}`);
    }
    return Buffer.from(value, 'utf8');
  },
  decode: (b) => b.toString(), // UTF-8; without arguments Buffer#toString skips its encoding lookup
};

export const booleanCodec: Codec<boolean> = {
  name: 'boolean',
  encode(value) {
    if (typeof value !== 'boolean') throw new TypeError(`expected a boolean, got ${describe(value)}`);
    return Buffer.from([value ? 1 : 0]);
  },
  decode(b) {
    if (b.length !== 1 || (b[0] !== 0 && b[0] !== 1)) throw new TypeError('boolean payload must be 0 or 1');
    return b[0] === 1;
  },
};

/** Date with millisecond precision (the precision of a JS Date). */
export const timestampCodec: Codec<Date> = {
  name: 'timestamp',
  encode(value) {
    if (!(value instanceof Date) || Number.isNaN(value.getTime())) {
      throw new TypeError(`expected a valid Date, got ${describe(value)}`);
    }
    const b = Buffer.allocUnsafe(8);
    b.writeDoubleBE(value.getTime(), 0);
    return b;
  },
  decode(b) {
    if (b.length !== 8) throw new TypeError('timestamp payload must be 8 bytes');
    return new Date(b.readDoubleBE(0));
  },
};

export const bytesCodec: Codec<Uint8Array> = {
  name: 'bytes',
  encode(value) {
    if (!(value instanceof Uint8Array)) throw new TypeError(`expected a Uint8Array, got ${describe(value)}`);
    return value;
  },
  decode: (b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength),
};

/** Type of a bad input, for errors: never its content. */
function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Date) return 'an invalid Date';
  return typeof value === 'object'
    ? `an object (${value.constructor?.name ?? 'Object'})`
    : `a ${typeof value}`;
}
