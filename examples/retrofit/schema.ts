/**
 * The app's table during and after the retrofit.
 *
 * - `email`, `note`: encrypted in place. The database column stays `text` (no DDL at all); the value
 *   becomes `byok1:<base64 envelope>`. During the backfill the columns are in `passthrough` mode
 *   (plaintext rows still read, every write encrypted); after `migrate verify` passes, drop `mode`
 *   (strict, the default).
 * - `ssn` → `ssn_enc`: the shadow-column path to a `bytea` column. `ssn_enc` is added
 *   (`ALTER TABLE "users" ADD COLUMN "ssn_enc" bytea;`), the app writes both while the backfill fills
 *   `ssn_enc` from `ssn`, then reads switch to `ssn_enc` and `ssn` is dropped.
 *
 * `MODE` is how the example flips the in-place columns from passthrough to strict; a real app just
 * edits the declaration and deploys.
 */
import { bigserial, pgTable, text } from 'drizzle-orm/pg-core';
import { encrypted, type ReadMode } from '../../src/index.ts';

export function usersTable(mode: ReadMode) {
  return pgTable('users', {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    tenantId: text('tenant_id').notNull(),
    email: encrypted.text('email', { storage: 'text', mode }),
    note: encrypted.text('note', { storage: 'text', mode }),
    /** The old plaintext column: kept (and dual-written) until the switch, then dropped. */
    ssn: text('ssn'),
    /** Its encrypted replacement. Pin `context` before you ever rename this column (see docs/retrofit.md). */
    ssnEnc: encrypted.text('ssn_enc', { context: 'public.users.ssn' }),
  });
}

/** What the app uses during the migration. */
export const users = usersTable('passthrough');

/** What `drizzle-byok migrate` works on (see drizzle-byok.config.ts). */
export const retrofitTables = [
  {
    table: users,
    tenantColumn: users.tenantId,
    columns: [users.email, users.note, { source: users.ssn, target: users.ssnEnc }],
  },
];
