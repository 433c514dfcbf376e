import { randomFillSync } from 'node:crypto';

/**
 * Random 96-bit IVs sliced from a pooled CSPRNG buffer.
 *
 * `randomBytes(12)` per call costs about as much as the AES-GCM operation itself; filling 1,024 IVs
 * at once amortises the call into the OS CSPRNG. Each slice of the pool is handed out exactly once
 * (the offset only moves forward; the pool is refilled in place when used up), so uniqueness is the
 * CSPRNG's: the same as fresh `randomBytes(12)` per call.
 */
const IV_BYTES = 12;
const IVS_PER_FILL = 1024;
const pool = Buffer.allocUnsafeSlow(IV_BYTES * IVS_PER_FILL);
let offset = pool.length;

/** Writes a fresh random IV into `out` at `at` (12 bytes). */
export function writeIv(out: Buffer, at: number): void {
  if (offset === pool.length) {
    randomFillSync(pool);
    offset = 0;
  }
  // 12 bytes: a loop is cheaper than Buffer#copy or a subarray for TypedArray#set.
  for (let i = 0; i < IV_BYTES; i++) out[at + i] = pool[offset + i]!;
  offset += IV_BYTES;
}
