/**
 * The app's table before the retrofit: plaintext everywhere.
 *
 *   create table users (id bigserial primary key, tenant_id text not null,
 *                       email text, note text, ssn text);
 */
import { bigserial, pgTable, text } from 'drizzle-orm/pg-core';

export const users = pgTable('users', {
  id: bigserial('id', { mode: 'number' }).primaryKey(),
  tenantId: text('tenant_id').notNull(),
  email: text('email'),
  note: text('note'),
  ssn: text('ssn'),
});
