import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { TestProject } from 'vitest/node';

/**
 * Chooses the PostgreSQL backend once for the whole run and tells every test file:
 * 1. `DATABASE_URL` when set (CI and the dev machines: the server at 127.0.0.1:5432);
 * 2. otherwise a throwaway PostgreSQL container through testcontainers, when a Docker engine answers;
 * 3. otherwise embedded PGlite (no server): driver suites then run on PGlite only, and tests that
 *    need several processes run their participants in-process on one PGlite instance.
 */
declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
    backend: string;
  }
}

let stop: (() => Promise<void>) | undefined;

async function dockerAnswers(): Promise<boolean> {
  try {
    await promisify(execFile)('docker', ['info', '--format', '{{.ServerVersion}}'], { timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let url = process.env.DATABASE_URL ?? '';
  let backend: string;
  if (url !== '') {
    // A fresh database for this run, so no state left by earlier runs (or older schemas) leaks in.
    const { default: postgres } = await import('postgres');
    const admin = postgres(url, { max: 1, onnotice: () => {} });
    const name = `byok_test_${process.pid}_${Date.now().toString(36)}`;
    await admin.unsafe(`create database "${name}"`);
    const base = new URL(url);
    base.pathname = `/${name}`;
    backend = `PostgreSQL from DATABASE_URL (${url.replace(/\/\/[^@]*@/, '//***@')}), fresh database ${name}`;
    url = base.toString();
    stop = async () => {
      await admin.unsafe(`drop database if exists "${name}" with (force)`);
      await admin.end();
    };
  } else if (await dockerAnswers()) {
    const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
    const container = await new PostgreSqlContainer('postgres:17-alpine').start();
    url = container.getConnectionUri();
    stop = async () => {
      await container.stop();
    };
    backend = 'PostgreSQL in a testcontainers container';
  } else {
    backend = 'embedded PGlite (no DATABASE_URL and no Docker engine)';
  }
  process.stdout.write(`\ndrizzle-byok tests: database backend = ${backend}\n\n`);
  project.provide('databaseUrl', url);
  project.provide('backend', backend);
  return async () => {
    await stop?.();
  };
}
