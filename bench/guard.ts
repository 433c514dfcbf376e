/**
 * Section "guard": what the fail-closed guard costs when a query is built.
 *
 * Query build time (`.toSQL()`: Drizzle's builder plus `sqlToQuery`, no database contacted) of a
 * typical select, insert and relational query, through `withEncryption` (guard, blind index
 * rewrite, tenant bookkeeping) vs the same query on plain Drizzle. The insert through
 * `withEncryption` also encrypts its two encrypted fields (warm key); "guard only" inserts the same
 * row into the plaintext twin table through the wrapped instance. Tasks are interleaved (order
 * rotated each round); each figure is the median of the rounds, ratios are paired per round.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { and, eq, isNotNull, relations } from 'drizzle-orm';
import { integer, pgTable, text } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import { uuidToBytes } from '../src/crypto/envelope.ts';
import { createKeyring, encrypted, localKek, withEncryption, withTenant } from '../src/index.ts';
import { keysOf } from '../src/keys/keyring.ts';
import {
  type BenchContext,
  fmtNs,
  fmtRatio,
  type MicroTask,
  markdownTable,
  measureRounds,
  median,
  pairedRatio,
  printSectionHeader,
  type Section,
  sink,
} from './lib.ts';

const TENANT = 'bench-guard';

const users = pgTable('users', {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  grp: integer('grp'),
  email: encrypted.text('email'),
  note: encrypted.text('note'),
});
const usersPlain = pgTable('users_plain', {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  grp: integer('grp'),
  email: text('email'),
  note: text('note'),
});
const posts = pgTable('posts', {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  userId: integer('user_id').notNull(),
  body: encrypted.text('body'),
});
const comments = pgTable('comments', {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  postId: integer('post_id').notNull(),
  body: encrypted.text('body'),
});
const usersRelations = relations(users, ({ many }) => ({ posts: many(posts) }));
const postsRelations = relations(posts, ({ one, many }) => ({
  user: one(users, { fields: [posts.userId], references: [users.id] }),
  comments: many(comments),
}));
const commentsRelations = relations(comments, ({ one }) => ({
  post: one(posts, { fields: [comments.postId], references: [posts.id] }),
}));
const schema = { users, usersPlain, posts, comments, usersRelations, postsRelations, commentsRelations };

async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.quick ? 3 : 9;
  printSectionHeader('Guard: query build time, withEncryption vs plain Drizzle', [
    '`.toSQL()` of each query (builder + SQL string, no database): the guard walks each query once per build, not per row or field.',
    `Median of ${rounds} interleaved rounds; ratios paired per round.`,
  ]);
  const plain = drizzle.mock({ schema });
  const wrapped = drizzle.mock({ schema });
  const keyring = createKeyring({
    db: drizzle.mock(),
    platformKek: localKek({ key: randomBytes(32) }),
    cache: { maxAgeMs: 3_600_000 },
  });
  withEncryption(wrapped, keyring, { tenantColumn: 'tenant_id' });
  const dekId = randomUUID();
  keysOf(keyring).cache.put(dekId, uuidToBytes(dekId), TENANT, 1, randomBytes(32), true);

  type Db = typeof plain;
  const select = (db: Db) =>
    db
      .select({ id: users.id, grp: users.grp, email: users.email, note: users.note })
      .from(users)
      .where(and(eq(users.tenantId, TENANT), isNotNull(users.email), eq(users.grp, 3)))
      .orderBy(users.id)
      .limit(50)
      .toSQL();
  const insert = (db: Db, table: typeof users | typeof usersPlain) =>
    db
      .insert(table)
      .values({ id: 1, tenantId: TENANT, grp: 2, email: 'ada@example.com', note: 'a note' })
      .toSQL();
  const relational = (db: Db) =>
    db.query.users
      .findMany({
        where: eq(users.tenantId, TENANT),
        columns: { id: true, email: true },
        with: {
          posts: { columns: { id: true, body: true }, with: { comments: { columns: { body: true } } } },
        },
        limit: 20,
      })
      .toSQL();
  // both sides run in a tenant scope (the wrapped insert needs one): only the build differs
  const scoped = <T>(fn: () => T) => withTenant(TENANT, fn) as T;
  // every task is checked once: the wrapped insert really encrypts
  const probe = scoped(() => insert(wrapped, users));
  if (!(probe.params as unknown[]).some((p) => Buffer.isBuffer(p)))
    throw new Error('the insert did not encrypt');

  const task = (id: string, fn: () => unknown): MicroTask => ({
    id,
    batch: 200,
    run: (n) => {
      for (let i = 0; i < n; i++) sink.value = fn();
    },
  });
  const tasks = [
    task('select plain', () => scoped(() => select(plain))),
    task('select wrapped', () => scoped(() => select(wrapped))),
    task('insert plain', () => scoped(() => insert(plain, usersPlain))),
    task('insert wrapped twin', () => scoped(() => insert(wrapped, usersPlain))),
    task('insert wrapped', () => scoped(() => insert(wrapped, users))),
    task('relational plain', () => scoped(() => relational(plain))),
    task('relational wrapped', () => scoped(() => relational(wrapped))),
  ];
  const times = await measureRounds(tasks, {
    rounds,
    timeMs: ctx.quick ? 100 : 400,
    warmupMs: ctx.quick ? 50 : 150,
  });
  const m = (id: string) => median(times.get(id)!);
  const r = (a: string, b: string) => pairedRatio(times.get(a)!, times.get(b)!);
  console.log(
    markdownTable(
      ['query', 'plain Drizzle', 'withEncryption', 'ratio'],
      [
        [
          'select (4 fields, where, order by, limit)',
          fmtNs(m('select plain')),
          fmtNs(m('select wrapped')),
          fmtRatio(r('select wrapped', 'select plain')),
        ],
        [
          'insert into the plaintext twin (guard only)',
          fmtNs(m('insert plain')),
          fmtNs(m('insert wrapped twin')),
          fmtRatio(r('insert wrapped twin', 'insert plain')),
        ],
        [
          'insert, 2 encrypted fields (guard + encryption)',
          fmtNs(m('insert plain')),
          fmtNs(m('insert wrapped')),
          fmtRatio(r('insert wrapped', 'insert plain')),
        ],
        [
          'relational findMany, 3 levels',
          fmtNs(m('relational plain')),
          fmtNs(m('relational wrapped')),
          fmtRatio(r('relational wrapped', 'relational plain')),
        ],
      ],
    ),
  );
}

export const guardBench: Section = {
  name: 'guard',
  title: 'query build time through withEncryption vs plain Drizzle (select, insert, relational)',
  run,
};
