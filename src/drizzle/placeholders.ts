import { inspect } from 'node:util';
import { PlaceholderLeakError } from '../errors.ts';
import type { EncryptedColumnState } from './column-state.ts';

/**
 * Sealed placeholders stand in for values whose data key is not in the cache yet: the column's
 * synchronous `toDriver`/`fromDriver` return them, and the middleware replaces them once the key is
 * loaded. They must never reach a driver, a log or a JSON body: every way of serializing one throws
 * `PlaceholderLeakError`, and `util.inspect` shows a redacted tag. Their contents are private fields.
 */
abstract class SealedPlaceholder {
  abstract readonly label: string;

  toJSON(): never {
    throw new PlaceholderLeakError(
      `an encrypted value of ${this.label} was about to be serialized before encryption/decryption finished`,
    );
  }

  toString(): never {
    throw new PlaceholderLeakError(`an encrypted value of ${this.label} was about to be turned into text`);
  }

  [Symbol.toPrimitive](): never {
    throw new PlaceholderLeakError(
      `an encrypted value of ${this.label} was about to be turned into a primitive`,
    );
  }

  /** node-postgres calls `toPostgres` on objects before JSON: refuse there too. */
  toPostgres(): never {
    throw new PlaceholderLeakError(`an encrypted value of ${this.label} reached the driver unencrypted`);
  }

  [inspect.custom](): string {
    return `[drizzle-byok sealed ${this.label}]`;
  }
}

/** A value to encrypt once the tenant's active data key is loaded. */
export class PendingWrite extends SealedPlaceholder {
  readonly #plaintext: Uint8Array;
  readonly tenantId: string;
  readonly column: EncryptedColumnState;

  constructor(tenantId: string, column: EncryptedColumnState, plaintext: Uint8Array) {
    super();
    this.tenantId = tenantId;
    this.column = column;
    this.#plaintext = plaintext;
  }

  get label(): string {
    return this.column.label;
  }

  /** @internal */
  plaintext(): Uint8Array {
    return this.#plaintext;
  }
}

/** A ciphertext read from the database whose data key is being loaded. */
export class PendingRead extends SealedPlaceholder {
  readonly bytes: Buffer;
  readonly dekId: string;
  readonly column: EncryptedColumnState;
  #value: unknown;
  #resolved = false;

  constructor(bytes: Buffer, dekId: string, column: EncryptedColumnState) {
    super();
    this.bytes = bytes;
    this.dekId = dekId;
    this.column = column;
  }

  get label(): string {
    return this.column.label;
  }

  /** @internal */
  resolve(value: unknown): void {
    this.#value = value;
    this.#resolved = true;
  }

  /** @internal */
  value(): unknown {
    if (!this.#resolved)
      throw new PlaceholderLeakError(`an encrypted value of ${this.label} was used before it was decrypted`);
    return this.#value;
  }
}
