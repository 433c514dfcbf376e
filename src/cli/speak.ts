import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The CLI speaks of commands and flags, never of the library's functions: library messages that
 * name an API ("use rotateKek", "pass { confirm }", "run installKeyStore(db)") are rewritten here
 * to the command or flag that does the same. One table, applied to every message the CLI prints.
 */
const API_TO_CLI: readonly (readonly [RegExp, string])[] = [
  [/`?(?:await )?(?:keyring\.)?installKeyStore\((?:db)?\)`?/g, '`drizzle-byok migrate install`'],
  [/\brotateKek\b(?:\(\))?/g, '`drizzle-byok keys rotate <tenant> --kek ...`'],
  [/\benableByok\b(?:\(\))?/g, '`drizzle-byok keys enable <tenant> --kek ...`'],
  [/\bdisableByok\b(?:\(\))?/g, '`drizzle-byok keys disable <tenant>`'],
  [/\brotateDek\b(?:\(\))?/g, '`drizzle-byok keys rotate <tenant>`'],
  [/\bcheckHealth\b(?:\(\))?/g, '`drizzle-byok keys health`'],
  [/\brunBackfill\b(?:\([^)]*\))?/g, '`drizzle-byok migrate run`'],
  [/\brollbackBackfill\b(?:\([^)]*\))?/g, '`drizzle-byok migrate rollback`'],
  [/\bverifyBackfill\b(?:\([^)]*\))?/g, '`drizzle-byok migrate verify`'],
  [/\bplanBackfill\b(?:\([^)]*\))?/g, '`drizzle-byok migrate plan`'],
  [/\bshred\(("[^"]*")\)/g, '`drizzle-byok keys shred $1`'],
  [/pass \{ confirm: ("[^"]*") \}/g, 'add --confirm $1'],
  [/pass \{ allowNoKeys: true \}/g, 'add --allow-no-keys'],
];

/** The key store is missing: the CLI's own wording. */
const KEY_STORE_MISSING = 'ERR_BYOK_KEY_STORE_MISSING';

export function cliMessage(message: string, code?: string): string {
  if (code === KEY_STORE_MISSING) {
    const detail = /\(([^()]*does not exist)\)/.exec(message)?.[1];
    return (
      `the drizzle-byok key store does not exist in this database${detail ? ` (${detail})` : ''}: create it with ` +
      '`drizzle-byok migrate install`, or apply node_modules/drizzle-byok/migrations/*.sql with your migration tool'
    );
  }
  let out = message;
  for (const [re, to] of API_TO_CLI) out = out.replace(re, to);
  return out;
}

/** This package's version (package.json next to src/ or dist/). */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'drizzle-byok' && typeof pkg.version === 'string') return pkg.version;
    }
    dir = dirname(dir);
  }
  return 'unknown';
}
