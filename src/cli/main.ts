#!/usr/bin/env node
/**
 * `drizzle-byok`: the command-line entry point (package `bin`). See `drizzle-byok --help` and
 * docs/retrofit.md. Ctrl-C (or SIGTERM) stops a backfill after its current batch, checkpoint saved
 * (exit 130); a second Ctrl-C exits at once (the checkpoint is still consistent).
 */
import { runCli } from './cli.ts';

const controller = new AbortController();
let interrupts = 0;
const onSignal = (signal: NodeJS.Signals) => {
  interrupts++;
  if (interrupts > 1) process.exit(130);
  process.stderr.write(`\ndrizzle-byok: ${signal}: stopping after the current batch (again to exit now)\n`);
  controller.abort();
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

// No top-level await: the entry also builds as CommonJS.
runCli(
  process.argv.slice(2),
  { stdout: process.stdout, stderr: process.stderr },
  { signal: controller.signal },
).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`drizzle-byok: error: ${(e as Error)?.message ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
