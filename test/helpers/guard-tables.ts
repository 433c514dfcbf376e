import { integer, pgSchema, text } from 'drizzle-orm/pg-core';
import { encrypted } from '../../src/index.ts';

/**
 * Tables for the guard suites, in the test's PostgreSQL schema: `acct` (encrypted), its plaintext
 * twin `acct_plain` (same property names, same rows), and `other` (another encrypted table).
 */
export function guardTables(schema: string) {
  const s = pgSchema(schema);
  const acct = s.table('acct', {
    id: integer('id').primaryKey(),
    tenantId: text('tenant_id').notNull(),
    grp: integer('grp'),
    email: encrypted.text('email'),
    note: encrypted.text('note'),
  });
  const acctPlain = s.table('acct_plain', {
    id: integer('id').primaryKey(),
    tenantId: text('tenant_id').notNull(),
    grp: integer('grp'),
    email: text('email'),
    note: text('note'),
  });
  const other = s.table('other', {
    id: integer('id').primaryKey(),
    tenantId: text('tenant_id').notNull(),
    email: encrypted.text('email'),
  });
  const ddl = [
    `create table "${schema}".acct (id integer primary key, tenant_id text not null, grp integer, email bytea, note bytea)`,
    `create table "${schema}".acct_plain (id integer primary key, tenant_id text not null, grp integer, email text, note text)`,
    `create table "${schema}".other (id integer primary key, tenant_id text not null, email bytea)`,
  ];
  return { acct, acctPlain, other, ddl };
}

/** A Drizzle logger that records every statement and its parameters as sent to the driver. */
export function recordingLogger() {
  const statements: { sql: string; params: unknown[] }[] = [];
  return {
    statements,
    logQuery(sql: string, params: unknown[]) {
      statements.push({ sql, params });
    },
  };
}
