/** `drizzle-byok/schema`: the key store tables, for drizzle-kit and for queries of your own. */
export * from './store/schema-key-store.ts';
/** The retrofit engine's checkpoint tables (`migrations/0002_retrofit.sql`). */
export { byokRetrofitChunks, byokRetrofitJobs } from './store/schema-retrofit.ts';
/** Blind index key versions (`migrations/0003_blind_index.sql`). */
export { byokBlindIndexKeys } from './store/schema-blind-index.ts';
/** Tenant onboarding records (`migrations/0004_key_identity.sql`). */
export { byokOnboarding } from './store/schema-identity.ts';
