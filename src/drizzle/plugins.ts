import { Column, is, Param, Placeholder } from 'drizzle-orm';
import { TenantMismatchError } from '../errors.ts';
import { assertTenantId, scopeStorage } from '../scope.ts';
import { columnTable, instrumentInsertLayout, placeholderName } from './chunks.ts';
import { type BuildContext, encryptedState } from './columns.ts';
import { guardSql, installGuard } from './guard.ts';
import type { BuiltQuery, ExecutionHooks, QueryPlugin } from './pipeline.ts';
import {
  checksOf,
  instrumentCount,
  instrumentTenantIsolation,
  runChecks,
  SCOPE_PLACEHOLDER,
  type TenantCheck,
} from './tenant-isolation.ts';

/**
 * The Drizzle layer's own query plugins (see `pipeline.ts`): thin adapters over the modules that
 * implement each concern, and the order they run in.
 */

/**
 * The plugin list of a pipeline: the version seam's inner half (next to Drizzle's builders), tenant
 * isolation, then `extra` (plugins that add values to what a statement writes: they see rows with
 * the tenant already given, and the guard checks what they add), the guard, and the version seam's
 * outer half (so every plugin sees the same row layout on both Drizzle majors).
 */
export function defaultPlugins(extra: readonly QueryPlugin[] = []): QueryPlugin[] {
  return [insertLayoutInner, tenantIsolation, ...extra, guard, insertLayoutOuter];
}

// -----------------------------------------------------------------------------------------------
// The Drizzle-version seam (chunks.ts)

/** On Drizzle 1.0: turns the `ValueRows` an insert builds into row arrays, the 0.45 layout. */
export const insertLayoutInner: QueryPlugin = {
  name: 'insert-layout (inner)',
  instrumentDialect: (dialect) => instrumentInsertLayout(dialect, 'inner'),
};

/** On Drizzle 1.0: binds raw insert row values to their columns as `Param`s. */
export const insertLayoutOuter: QueryPlugin = {
  name: 'insert-layout (outer)',
  instrumentDialect: (dialect) => instrumentInsertLayout(dialect, 'outer'),
};

// -----------------------------------------------------------------------------------------------
// The guard (guard.ts)

/**
 * The fail-closed allowlist: on the builders (what the user wrote), and on SQL that reaches
 * `sqlToQuery` without a builder. Shapes other plugins allow (`allowsSql`) pass.
 */
export const guard: QueryPlugin = {
  name: 'guard',
  instrumentDialect: (dialect, env) => installGuard(dialect, env.tenantColumn, env.allowsSql),
  beginBuild(root, _build, env) {
    guardSql(root, env.allowsSql);
    return undefined;
  },
};

// -----------------------------------------------------------------------------------------------
// Tenant isolation (tenant-isolation.ts)

/**
 * With a tenant column: the tenant predicate and write checks on the builders and `$count`; in the
 * SQL walk, each inserted row's tenant (its encrypted values are encrypted under it); at execution,
 * the scope tenant filled into the predicate's placeholder and the recorded checks run.
 */
export const tenantIsolation: QueryPlugin = {
  name: 'tenant-isolation',
  instrumentDialect(dialect, env) {
    if (env.tenantColumn !== undefined) instrumentTenantIsolation(dialect, env.tenantColumn);
  },
  instrumentDatabase(db, env) {
    if (env.tenantColumn !== undefined) instrumentCount(db, env.tenantColumn);
  },
  beginBuild(_root, build, env) {
    const tenantColumn = env.tenantColumn;
    if (tenantColumn === undefined) return undefined;
    const checks: TenantCheck[] = [];
    return {
      sql(node) {
        const own = checksOf(node);
        if (own !== undefined) checks.push(...own);
      },
      array: (row) => collectRowTenant(row, build, tenantColumn),
      built: (query) => attachTenantChecks(query, checks),
    };
  },
  prepare: (query) => tenantHooks(query),
};

/**
 * An insert row is an array of Params of several columns (an `inArray` list has one column only).
 * When the row has the tenant column, the row's tenant must match the scope, and its encrypted
 * values are encrypted under the row's tenant.
 */
function collectRowTenant(row: readonly unknown[], ctx: BuildContext, tenantColumn: string): void {
  let tenant: Param | undefined;
  let encrypted = false;
  let firstEncoder: unknown;
  let columns = 0;
  for (const el of row) {
    if (!is(el, Param)) continue;
    const p = el as Param;
    if (columns === 0 || (columns === 1 && p.encoder !== firstEncoder)) {
      columns++;
      firstEncoder ??= p.encoder;
    }
    if (encryptedState(p.encoder) !== undefined) encrypted = true;
    else if (isTenantColumn(p.encoder, tenantColumn)) tenant = p;
  }
  if (columns < 2 || tenant === undefined || tenant.value === null || tenant.value === undefined) return;
  if (is(tenant.value, Placeholder)) return; // checked when the statement executes
  assertTenantId(tenant.value, `the tenant column ${tenantColumn} of a row`);
  const rowTenant = tenant.value;
  const scoped = scopeStorage.getStore()?.tenantId;
  if (typeof scoped === 'string' && scoped !== rowTenant) {
    throw new TenantMismatchError(
      `a row of tenant ${rowTenant} was written inside the scope of tenant ${scoped}`,
      {
        tenantId: scoped,
      },
    );
  }
  if (!encrypted) return;
  for (const el of row) {
    if (!is(el, Param)) continue;
    const p = el as Param;
    if (encryptedState(p.encoder) !== undefined && p.value !== null && !is(p.value, Placeholder)) {
      ctx.rowTenants.push({ value: p.value, tenantId: rowTenant });
    }
  }
}

/** The tenant column by database name, or by property name on its table. */
function isTenantColumn(encoder: unknown, tenantColumn: string): boolean {
  if (!is(encoder, Column)) return false;
  const c = encoder as Column;
  if (c.name === tenantColumn) return true;
  const columns = (columnTable(c) as Record<symbol, Record<string, Column> | undefined>)[
    Symbol.for('drizzle:Columns')
  ];
  return columns?.[tenantColumn] === c || columns?.[tenantColumn]?.name === c.name;
}

/** Tenant checks carried from the built SQL to execution. */
const TENANT_CHECKS: unique symbol = Symbol('drizzle-byok:query-tenant-checks') as never;

function attachTenantChecks(query: BuiltQuery, checks: TenantCheck[]): void {
  if (checks.length > 0) Object.defineProperty(query, TENANT_CHECKS, { value: checks, enumerable: false });
}

/**
 * What a statement needs from the scope it executes in: the scope tenant (when it has the
 * predicate's placeholder), and its write checks; undefined when neither.
 */
function tenantHooks(query: BuiltQuery): ExecutionHooks | undefined {
  const checks = (query as { [TENANT_CHECKS]?: TenantCheck[] })[TENANT_CHECKS] ?? [];
  let scope = false;
  for (const p of query.params) {
    const ph = is(p, Param) ? (p as Param).value : p;
    if (is(ph, Placeholder) && placeholderName(ph) === SCOPE_PLACEHOLDER) {
      scope = true;
      break;
    }
  }
  if (!scope && checks.length === 0) return undefined;
  return {
    values(placeholderValues) {
      const values = { ...placeholderValues };
      if (scope) {
        const t = scopeStorage.getStore()?.tenantId;
        values[SCOPE_PLACEHOLDER] = typeof t === 'string' ? t : null;
      }
      return { values, rowTenants: runChecks(checks, values) };
    },
  };
}
