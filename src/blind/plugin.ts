import type { QueryPlugin } from '../drizzle/pipeline.ts';
import { allIndexes } from './column.ts';
import { translateBlindError } from './errors.ts';
import { resolveBlindParams } from './resolve.ts';
import { isBlindLookup, lookupRewriter } from './rewrite.ts';
import { isBlindPending } from './sealed.ts';
import { instrumentBlindWrites } from './writes.ts';

/**
 * The blind index as a query plugin (see `src/drizzle/pipeline.ts`):
 * - builders: rows and `set` objects that write an indexed column get the index value (`writes.ts`);
 * - the guard allows the lookups it rewrites (`rewrite.ts`, `isBlindLookup`);
 * - in the SQL walk, `eq`/`inArray` on an indexed column become index lookups, undone after the build;
 * - at execution, index values, lookup values and the lookup's tenant are computed (`resolve.ts`);
 * - a unique violation on an index names the encrypted column (`errors.ts`).
 * Until a blind index column is built in the process there is nothing to rewrite, and the walk has
 * no blind index visitor.
 */
export const blindIndexPlugin: QueryPlugin = {
  name: 'blind-index',
  instrumentDialect: (dialect, env) => instrumentBlindWrites(dialect, env.keyring, env.tenantColumn),
  allowsSql: isBlindLookup,
  beginBuild: (_root, _build, env) => (allIndexes.size === 0 ? undefined : lookupRewriter(env.tenantColumn)),
  pendingParam: isBlindPending,
  resolveParams: (filled, values, run) => resolveBlindParams(run.keyring, filled, values, run.txDb),
  translateError: translateBlindError,
};
