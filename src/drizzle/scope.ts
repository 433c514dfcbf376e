/**
 * The tenant scope lives in `src/scope.ts` (below `keys/`, which runs key-store queries outside it).
 * Re-exported here for the Drizzle layer's modules that still import it from this path.
 */
export * from '../scope.ts';
