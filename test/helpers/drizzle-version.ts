import * as orm from 'drizzle-orm';

/**
 * The Drizzle ORM major the suite runs on, by feature (1.0 has `defineRelations` and relational
 * queries v2; 0.44/0.45 have `relations()` and v1). The library itself never asks this: its one
 * version seam is src/drizzle/chunks.ts; tests ask it only to build the relational API of each.
 */
export const DRIZZLE_1: boolean = typeof (orm as Record<string, unknown>).defineRelations === 'function';

type AnyFn = (...args: any[]) => any;
const v1Module = DRIZZLE_1 ? 'drizzle-orm/_relations' : 'drizzle-orm';
/** `relations()` of relational queries v1 (in `drizzle-orm` on 0.45, `drizzle-orm/_relations` on 1.0). */
export const relationsV1: typeof import('drizzle-orm').relations = (
  (await import(/* @vite-ignore */ v1Module)) as { relations: typeof import('drizzle-orm').relations }
).relations;
/** `defineRelations()` of relational queries v2 (1.0 only). */
export const defineRelations: AnyFn | undefined = (orm as Record<string, unknown>).defineRelations as
  | AnyFn
  | undefined;

/** The v2 relations of a schema object built by a fixture (see `withRelationsV2`). */
const V2 = Symbol.for('drizzle-byok:test-relations-v2');

/** Attaches the v2 relations a fixture defines to its v1 schema object (used on 1.0 only). */
export function withRelationsV2<T extends Record<string, unknown>>(schema: T, build: () => unknown): T {
  // Enumerable, so a spread copy of the schema keeps it (a symbol key: 0.45's drizzle() never sees it).
  if (DRIZZLE_1) Object.defineProperty(schema, V2, { value: build(), enumerable: true });
  return schema;
}

function isTable(v: unknown): boolean {
  return v !== null && typeof v === 'object' && Symbol.for('drizzle:IsDrizzleTable') in (v as object);
}

/**
 * The `drizzle({ client, ... })` config giving relational queries over `schema` on either major:
 * `{ schema }` on 0.45 (v1), `{ relations }` on 1.0 (v2: the fixture's own, or every table of the
 * schema without relations).
 */
export function relationalConfig(schema: Record<string, unknown> | undefined): Record<string, unknown> {
  if (schema === undefined) return {};
  if (!DRIZZLE_1) return { schema };
  const own = (schema as { [V2]?: unknown })[V2];
  if (own !== undefined) return { relations: own };
  const tables = Object.fromEntries(Object.entries(schema).filter(([, v]) => isTable(v)));
  return { relations: defineRelations!(tables) };
}
