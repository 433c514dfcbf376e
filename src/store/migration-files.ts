import { readFileSync } from 'node:fs';

/**
 * The text of one shipped migration, `migrations/<file>`: the only place the library's SQL is
 * written. Run from source (tests, bench, examples), this reads the file next to the package; the
 * build (`tsup.config.ts`) replaces this module with one holding every `migrations/*.sql` inlined,
 * so the published code does no file I/O and survives bundling.
 */
export function readMigration(file: string): string {
  return readFileSync(new URL(`../../migrations/${file}`, import.meta.url), 'utf8');
}
