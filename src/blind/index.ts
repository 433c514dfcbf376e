/**
 * Blind indexes: equality search on encrypted columns, as one plugin of the query pipeline. The
 * column type (`column.ts`), its keys (`keys.ts`; their table is `store/schema-blind-index.ts`), the
 * write maintenance (`writes.ts`),
 * the lookup rewrite (`rewrite.ts`) and its execution (`resolve.ts`), explicit lookups
 * (`lookups.ts`), re-indexing (`reindex.ts`) and the plugin (`plugin.ts`).
 */
export { type BlindIndexOptions, type BlindIndexState, blindIndex, indexInput } from './column.ts';
export { BlindIndexUniqueViolationError } from './errors.ts';
export { type BlindIndexConfig, configureBlindIndexes, type IndexKeyOwner, registryFor } from './keys.ts';
export { blindIndexValues, findByBlindIndex, matches, tableBlindIndexes } from './lookups.ts';
export { blindIndexPlugin } from './plugin.ts';
export {
  type BackfillReport,
  type BlindIndexStatus,
  type BlindIndexTarget,
  backfillBlindIndex,
  blindIndexStatus,
  type ReindexPassReport,
  type RotationEvent,
  type RotationReport,
  rotateBlindIndex,
} from './reindex.ts';
export { withEncryption, type WithEncryptionOptions } from './with-encryption.ts';
