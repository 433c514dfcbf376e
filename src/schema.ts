/** `drizzle-byok/schema`: the key store tables, for drizzle-kit and for queries of your own. */
export * from './keys/schema.ts';
/** The retrofit engine's checkpoint tables (`migrations/0002_retrofit.sql`). */
export { byokRetrofitChunks, byokRetrofitJobs } from './migrate/schema.ts';
/** Blind index key versions (`migrations/0003_blind_index.sql`). */
export { byokBlindIndexKeys } from './blind/schema.ts';
/** Tenant onboarding records (`migrations/0004_key_identity.sql`). */
export { byokOnboarding } from './keys/identity-schema.ts';
