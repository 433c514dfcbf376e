import { Column, is, Name, Param, Placeholder, SQL, StringChunk, Table } from 'drizzle-orm';
import type { AnyPgDatabase, Keyring } from '../keys/keyring.ts';
import type { BuildContext } from './columns.ts';
import { nestedSql } from './sql-walk.ts';

/**
 * The query pipeline's plugin interface. `withEncryption` (the core, `middleware.ts`) instruments a
 * Drizzle database with an ordered list of plugins and knows none of them: it installs each one's
 * dialect wrappers, walks the SQL tree of every build once for all of them, and runs their hooks
 * around execution. The guard, tenant isolation and the Drizzle-version seam (`plugins.ts`) and the
 * blind index (`src/blind/plugin.ts`) are plugins. Every hook is optional and synchronous unless it
 * returns a promise; a hook that throws refuses the query (nothing is sent).
 */
export interface QueryPlugin {
  /** For messages and debugging. */
  readonly name: string;
  /**
   * Wraps the dialect's builders (`buildSelectQuery`, `buildInsertQuery`, ...), once per dialect.
   * Plugins are installed in list order, so the first plugin's wrapper is the innermost: a build
   * runs the wrappers from the last plugin to the first.
   */
  instrumentDialect?(dialect: object, env: PipelineEnv): void;
  /**
   * Instruments a database object that builds SQL outside the dialect builders (`$count`): the
   * database, each replica and `$primary` of `withReplicas`, every transaction and savepoint.
   */
  instrumentDatabase?(db: object, env: PipelineEnv): void;
  /**
   * Whether an SQL node's chunks are a shape this plugin makes and owns (the blind index's rewritten
   * lookup), which the guard then lets through: the allowlist is extended only this way.
   */
  allowsSql?(chunks: readonly unknown[]): boolean;
  /**
   * Start of one SQL-to-query build (`dialect.sqlToQuery`): may check `root` (and throw), and
   * returns the visitor this plugin needs in the build's single SQL walk, or undefined.
   */
  beginBuild?(root: SQL, build: BuildContext, env: PipelineEnv): SqlVisitor | undefined;
  /** What a prepared statement needs from this plugin at each execution, or undefined. */
  prepare?(query: BuiltQuery, env: PipelineEnv): ExecutionHooks | undefined;
  /** Whether a parameter is a value of this plugin's that must be computed before execution. */
  pendingParam?(param: unknown): boolean;
  /**
   * Replaces this plugin's pending values in `filled` (a fresh array, placeholders already filled;
   * never the prepared statement's own params), in the query's scope, before the statement is
   * prepared again with them.
   */
  resolveParams?(filled: unknown[], values: Record<string, unknown>, run: ExecutionEnv): Promise<void>;
  /** Maps an error the driver threw (e.g. a unique violation on a column it owns); else returns it. */
  translateError?(e: unknown): unknown;
}

/** What `withEncryption` was given, as each plugin sees it. */
export interface PipelineEnv {
  readonly keyring: Keyring;
  /** The tenant column name (database or property name), when tenant isolation is on. */
  readonly tenantColumn: string | undefined;
  /** Whether any plugin of this pipeline allows these SQL chunks (see `QueryPlugin.allowsSql`). */
  allowsSql(chunks: readonly unknown[]): boolean;
}

/** The execution side of a statement, for `resolveParams`. */
export interface ExecutionEnv {
  readonly keyring: Keyring;
  /** The transaction the statement runs in, if any. */
  readonly txDb: AnyPgDatabase | undefined;
}

/** A query as Drizzle built it: its SQL string and parameters. */
export interface BuiltQuery {
  sql: string;
  params: unknown[];
  typings?: unknown[];
}

/**
 * A plugin's part of the build's single walk of the SQL tree (see `walkSql`). The walk runs before
 * Drizzle maps the parameters; `built` and `restore` run after.
 */
export interface SqlVisitor {
  /**
   * Each SQL node, the first time the walk reaches it, before its chunks are walked. It may replace
   * `node.queryChunks` (the walk then goes on into the new chunks) if `restore` puts them back.
   */
  sql?(node: SQL): void;
  /** Each array of chunks (insert rows, `inArray` lists), every time the walk reaches it. */
  array?(chunks: readonly unknown[]): void;
  /** Drizzle built the query (not called when the build threw). */
  built?(query: BuiltQuery): void;
  /** The build is over, built or failed: undo in-place changes to the tree. */
  restore?(): void;
}

/** Placeholder values of one execution, and the tenants of encrypted placeholders of tenant-bearing rows. */
export interface ExecutionValues {
  values: Record<string, unknown>;
  rowTenants?: Map<Param, string> | undefined;
}

export interface ExecutionHooks {
  /** Fills this plugin's placeholders and runs its checks, before parameters are resolved. */
  values(placeholderValues: Record<string, unknown> | undefined): ExecutionValues;
}

/**
 * Walks the SQL tree once for every visitor: SQL nodes (each once, in the order Drizzle renders
 * them), arrays (each time reached), and the trees a chunk renders (subqueries, aliased SQL, query
 * builders used as values; `nestedSql`). Leaves holding no SQL (strings, params, columns, dates,
 * buffers) are skipped.
 */
export function walkSql(root: SQL, visitors: readonly SqlVisitor[]): void {
  let onSql = false;
  let onArray = false;
  for (const v of visitors) {
    if (v.sql !== undefined) onSql = true;
    if (v.array !== undefined) onArray = true;
  }
  if (!onSql && !onArray) return;
  const seen = onSql ? new Set<SQL>() : undefined;
  const visitSql = (s: SQL): void => {
    if (seen !== undefined && !seen.has(s)) {
      seen.add(s);
      for (const v of visitors) v.sql?.(s);
    }
    visitChunks(s.queryChunks);
  };
  const visitChunks = (chunks: readonly unknown[]): void => {
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i];
      if (c === null || typeof c !== 'object' || c instanceof StringChunk) continue;
      // Fast paths: the common chunks, by `instanceof` (drizzle's `is` below covers other installs).
      if (c instanceof SQL) {
        visitSql(c);
        continue;
      }
      if (
        c instanceof Param ||
        c instanceof Column ||
        c instanceof Table ||
        c instanceof Name ||
        c instanceof Placeholder ||
        ArrayBuffer.isView(c) ||
        c instanceof Date
      )
        continue;
      if (Array.isArray(c)) {
        if (onArray) for (const v of visitors) v.array?.(c);
        visitChunks(c);
      } else if (is(c, SQL)) visitSql(c as SQL);
      else if (!is(c, Column)) {
        const inner = nestedSql(c);
        if (inner !== undefined) visitSql(inner);
      }
    }
  };
  visitSql(root);
}
