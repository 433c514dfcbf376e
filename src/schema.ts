/** `drizzle-byok/schema`: the key store tables, for drizzle-kit and for queries of your own. */
export * from './keys/schema.ts';
