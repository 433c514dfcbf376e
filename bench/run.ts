/**
 * `npm run bench`: prints Markdown tables ready to paste into the README.
 *
 *   npm run bench                  every section
 *   npm run bench -- crypto        only sections whose name contains one of the arguments
 *   npm run bench -- --list        list the sections
 *   BENCH_QUICK=1 npm run bench    a short smoke run (figures not meant for publishing)
 *   DATABASE_URL=postgres://...    PostgreSQL for the end-to-end sections
 *                                  (default postgres://postgres@127.0.0.1:5432/test)
 *
 * To add a section, write a module exporting a `Section` (see bench/lib.ts) and append it to
 * `sections` below.
 */
import { blindIndexBench } from './blind-index.ts';
import { coldStartBench } from './cold-start.ts';
import { cryptoBench } from './crypto.ts';
import { guardBench } from './guard.ts';
import { envLine, markdownTable, recordedTargets, type Section } from './lib.ts';
import { memoryBench } from './memory.ts';
import { retrofitBench } from './retrofit.ts';
import { providersBench } from './providers.ts';
import { rlsBench } from './rls.ts';
import { selectBench } from './select.ts';

export const sections: readonly Section[] = [
  cryptoBench,
  selectBench,
  guardBench,
  retrofitBench,
  blindIndexBench,
  coldStartBench,
  memoryBench,
  rlsBench,
  providersBench,
];

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  if (args.includes('--list') || args.includes('--help')) {
    for (const s of sections) console.log(`${s.name.padEnd(10)} ${s.title}`);
    return 0;
  }
  const filters = args.filter((a) => !a.startsWith('-'));
  const chosen =
    filters.length === 0 ? sections : sections.filter((s) => filters.some((f) => s.name.includes(f)));
  if (chosen.length === 0) {
    console.error(
      `no section matches ${filters.join(', ')}; sections: ${sections.map((s) => s.name).join(', ')}`,
    );
    return 2;
  }
  const quick = process.env.BENCH_QUICK === '1' || process.env.BENCH_QUICK === 'true';
  console.log(`# drizzle-byok benchmarks${quick ? ' (BENCH_QUICK: short run, indicative only)' : ''}`);
  const started = performance.now();
  for (const s of chosen) {
    const t0 = performance.now();
    await s.run({ quick });
    console.log(`_section ${s.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s_`);
  }
  const targets = recordedTargets();
  if (targets.length > 0) {
    console.log(`\n## Targets\n\n${envLine()}\n`);
    console.log(
      markdownTable(
        ['figure', 'section', 'measured', 'target', 'result'],
        targets.map((t) => [t.label, t.section, t.value, t.goal, t.met ? 'met' : 'not met']),
      ),
    );
    const missed = targets.filter((t) => !t.met).length;
    console.log(`\n_${targets.length - missed} of ${targets.length} targets met in this run._`);
  }
  console.log(`\n_total ${((performance.now() - started) / 1000).toFixed(1)} s_`);
  return 0;
}

process.exitCode = await main();
