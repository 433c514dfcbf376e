import { type Column, sql, type SQL } from 'drizzle-orm';
import { type PgColumn, type PgPolicy, type PgRole, pgPolicy } from 'drizzle-orm/pg-core';
import { ByokConfigError } from '../errors.ts';
import { columnTable } from './chunks.ts';

/**
 * Database-enforced tenant isolation (PostgreSQL row-level security), as defence in depth beside the
 * query scoping of `withEncryption({ tenantColumn })`: it also covers raw `db.execute(sql...)`.
 *
 * With `withEncryption(db, keyring, { tenantColumn, rls: true })`, every statement run inside
 * `withTenant(t)` runs in a transaction where `set_config('byok.tenant', t, true)` was called
 * (transaction-local, so it is safe behind PgBouncer in transaction mode). Outside a user
 * transaction the middleware opens one per statement; inside one it sets the tenant before the
 * first statement (and again when the scope's tenant changes). The policies compare the tenant
 * column with that setting; with no setting (no scope, `withAnyTenant`) they match no row.
 */
export interface RlsOptions {
  /** The setting the policies read. Default `'byok.tenant'`. Must contain a dot (a custom setting). */
  setting?: string;
}

export interface RlsConfig {
  readonly setting: string;
}

export const DEFAULT_RLS_SETTING = 'byok.tenant';

const SETTING_RE = /^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$/;

export function rlsStatements(options: RlsOptions | boolean | undefined): RlsConfig | undefined {
  if (options === undefined || options === false) return undefined;
  const setting = options === true ? DEFAULT_RLS_SETTING : (options.setting ?? DEFAULT_RLS_SETTING);
  if (typeof setting !== 'string' || !SETTING_RE.test(setting)) {
    throw new ByokConfigError(
      `rls.setting must be a custom setting name like 'byok.tenant' (lowercase, one dot), got '${String(setting)}'`,
    );
  }
  return { setting };
}

export interface TenantPolicyOptions {
  /** Policy name. Default `'<table>_tenant_isolation'` is derived by drizzle-kit's naming: pass one. */
  name?: string;
  /** Role(s) the policy applies to. Default `'public'` (every role without BYPASSRLS). */
  to?: PgRole | string | readonly (PgRole | string)[];
  /** The setting compared. Default `'byok.tenant'` (same as `withEncryption`'s `rls.setting`). */
  setting?: string;
  /** SQL type the setting is cast to. Default: from the column (`uuid`, `integer`, `bigint`, else `text`). */
  type?: string;
}

const TYPES: Record<string, string> = {
  PgUUID: 'uuid',
  PgInteger: 'integer',
  PgSmallInt: 'smallint',
  PgBigInt53: 'bigint',
  PgBigInt64: 'bigint',
};

const TYPE_RE = /^[a-z][a-z0-9 ]*$/;

/** The condition a policy enforces: the row's tenant is the tenant set for the transaction. */
export function tenantCondition(
  column: Column | PgColumn,
  setting = DEFAULT_RLS_SETTING,
  type?: string,
): SQL {
  rlsStatements({ setting });
  type ??= TYPES[(column as { columnType?: string }).columnType ?? ''] ?? 'text';
  if (!TYPE_RE.test(type))
    throw new ByokConfigError(`tenantPolicy: type must be an SQL type name, got '${type}'`);
  return sql`${sql.identifier(column.name)} = nullif(current_setting(${sql.raw(`'${setting}'`)}, true), '')::${sql.raw(type)}`;
}

/**
 * A row-level security policy for a Drizzle table, for drizzle-kit to emit:
 *
 * ```ts
 * export const patients = pgTable('patients', { ... }, (t) => [tenantPolicy(t.tenantId)]);
 * ```
 *
 * The policy covers every command (`for all`): rows are visible, updatable and deletable, and rows
 * can be inserted, only when their tenant column equals the transaction's `byok.tenant` setting.
 * drizzle-kit enables row-level security on the table; also run `rlsSql(...)`'s
 * `FORCE ROW LEVEL SECURITY` (drizzle-kit does not emit it) unless the app's role does not own the table.
 */
export function tenantPolicy(column: Column | PgColumn, options: TenantPolicyOptions = {}): PgPolicy {
  const condition = tenantCondition(column, options.setting, options.type);
  const name = options.name ?? `${columnTable(column) ? tableName(column) : 'table'}_tenant_isolation`;
  const to = options.to === undefined ? 'public' : options.to;
  return pgPolicy(name, {
    as: 'permissive',
    for: 'all',
    to: to as never,
    using: condition,
    withCheck: condition,
  });
}

function tableName(column: Column | PgColumn): string {
  return (columnTable(column) as Record<symbol, string>)[Symbol.for('drizzle:Name')] ?? 'table';
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * The SQL that puts a table under tenant row-level security, for databases not managed by
 * drizzle-kit (or for the `FORCE` it does not emit): enable, force (so the table owner is subject to
 * the policy too), and the policy itself. Idempotent except for `create policy` (drop it first).
 */
export function rlsSql(
  table: { schema?: string; name: string },
  tenantColumn: string,
  options: { setting?: string; type?: string; policyName?: string; to?: string } = {},
): string[] {
  const setting = options.setting ?? DEFAULT_RLS_SETTING;
  rlsStatements({ setting });
  const qualified =
    table.schema === undefined
      ? quoteIdent(table.name)
      : `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
  const policy = quoteIdent(options.policyName ?? `${table.name}_tenant_isolation`);
  const cond = `${quoteIdent(tenantColumn)} = nullif(current_setting('${setting}', true), '')::${options.type ?? 'text'}`;
  return [
    `alter table ${qualified} enable row level security`,
    `alter table ${qualified} force row level security`,
    `drop policy if exists ${policy} on ${qualified}`,
    `create policy ${policy} on ${qualified} as permissive for all to ${options.to ?? 'public'} using (${cond}) with check (${cond})`,
  ];
}
