/**
 * Section "crypto": per-field encrypt and decrypt at 16 B, 256 B and 4 KiB.
 *
 * drizzle-byok is measured twice: `seal`/`open` (src/crypto/aead.ts) on a derived field key, and the
 * whole column path (`encrypted.text` column: codec, key cache lookup, seal/open, utf8). Baselines
 * are bare node:crypto AES-256-GCM loops with a fresh `randomBytes(12)` IV per encryption, with the
 * key as a Buffer (what typical code does) and as a KeyObject (the strongest baseline, which the
 * targets are judged against). Peers (bench/peers.ts) run in the same rounds.
 */
import {
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  type KeyObject,
  randomBytes,
  randomUUID,
} from 'node:crypto';
import { integer, pgTable } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import { deriveFieldKey, open, seal } from '../src/crypto/aead.ts';
import { uuidToBytes } from '../src/crypto/envelope.ts';
import { type BuildContext, inBuildContext, type QueryContext } from '../src/drizzle/columns.ts';
import { scopeStorage } from '../src/scope.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { createKeyring, encrypted, localKek } from '../src/index.ts';
import {
  type BenchContext,
  checkTarget,
  fmtNs,
  fmtRatio,
  type MicroTask,
  markdownTable,
  measureRounds,
  median,
  interleavedRatio,
  pairedRatio,
  printSectionHeader,
  type Section,
  sink,
} from './lib.ts';
import { awsEsdkTasks, batchFor, cloakTasks } from './peers.ts';

const SIZES = [16, 256, 4096] as const;
const TENANT = 'bench-tenant';

function sizeLabel(size: number): string {
  return size >= 1024 ? `${size / 1024} KiB` : `${size} B`;
}

/** Printable ASCII text of exactly `size` bytes (so text and bytes paths see the same payload). */
function asciiText(size: number): string {
  return randomBytes(size).toString('base64').slice(0, size);
}

// Bare loops: the code an application would write by hand, output `iv ‖ ciphertext ‖ tag` in one
// Buffer (the same one-buffer output as our envelope). No AAD (less work than ours).

function bareEncrypt(key: Buffer | KeyObject, pt: Buffer): Buffer {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  const ct = c.update(pt);
  c.final();
  return Buffer.concat([iv, ct, c.getAuthTag()]);
}

function bareDecrypt(key: Buffer | KeyObject, msg: Buffer): Buffer {
  const n = msg.length;
  const d = createDecipheriv('aes-256-gcm', key, msg.subarray(0, 12), { authTagLength: 16 });
  d.setAuthTag(msg.subarray(n - 16));
  const pt = d.update(msg.subarray(12, n - 16));
  d.final();
  return pt;
}

interface Row {
  readonly label: string;
  /** Task id stem: `enc/<stem>/<size>` and `dec/<stem>/<size>`. */
  readonly stem: string;
}

async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.quick ? 2 : 7;
  const timeMs = ctx.quick ? 40 : 120;
  const warmupMs = ctx.quick ? 10 : 30;
  printSectionHeader('Per-field encrypt / decrypt (AES-256-GCM)', [
    `${rounds} rounds × ${timeMs} ms per task (tinybench, ${warmupMs} ms warmup), task order rotated each round;` +
      ' a sample is a batch of 64 ops (16 at 4 KiB; 1 for the async AWS SDK).',
    'ns/op = median over rounds of the per-round median; ratios = median of per-round paired ratios.',
    '"× KeyObject" compares with the bare node:crypto loop using a KeyObject key (the strongest baseline: targets are judged against it);' +
      ' "× Buffer" with the same loop using a Buffer key (what typical code does).',
    'Bare loops: `randomBytes(12)` IV per encryption, no AAD, output `iv ‖ ct ‖ tag`. drizzle-byok binds tenant + column in the AAD, writes a 30-byte header and takes IVs from a pooled CSPRNG buffer.',
  ]);

  const bufKey = randomBytes(32);
  const objKey = createSecretKey(Buffer.from(bufKey));
  const dek = randomBytes(32);
  const dekId = randomUUID();
  const context = 'public.patients.name';
  const fk = deriveFieldKey(dek, uuidToBytes(dekId), TENANT, context);

  // Column path: a real `encrypted.text` column and keyring, with the tenant's key in the cache
  // (warm), as inside a query of `withEncryption(db, keyring)`. No database is contacted.
  const patients = pgTable('patients', { id: integer('id'), name: encrypted.text('name') });
  const keyring = createKeyring({
    db: drizzle.mock(),
    platformKek: localKek({ key: randomBytes(32) }),
    cache: { maxAgeMs: 3_600_000 },
  });
  keysOf(keyring).cache.put(dekId, uuidToBytes(dekId), TENANT, 1, Buffer.from(dek), true);
  const build: BuildContext = { keyring, rowTenants: [], cursor: 0 };
  const query: QueryContext = { keyring, tenantId: TENANT, scoped: true, pending: [], now: Date.now() };
  const column = patients.name;

  const rows: Row[] = [
    { label: 'node:crypto, Buffer key (typical bare loop)', stem: 'bare-buffer' },
    { label: 'node:crypto, KeyObject key (strong baseline)', stem: 'bare-keyobject' },
    { label: '**drizzle-byok `seal` / `open`**', stem: 'ours' },
    { label: '**drizzle-byok `encrypted.text` column path**', stem: 'column' },
  ];
  const tasks: MicroTask[] = [];
  const extra: MicroTask[] = [];
  for (const size of SIZES) {
    const text = asciiText(size);
    const pt = Buffer.from(text, 'utf8');
    const batch = batchFor(size);
    const bufMsg = bareEncrypt(bufKey, pt);
    const objMsg = bareEncrypt(objKey, pt);
    const env = seal(fk, pt);
    const colEnv = inBuildContext(build, () =>
      scopeStorage.run({ tenantId: TENANT }, () => column.mapToDriverValue(text)),
    ) as Buffer;
    if (!bareDecrypt(bufKey, bufMsg).equals(pt) || !bareDecrypt(objKey, objMsg).equals(pt))
      throw new Error('bare round trip failed');
    if (!open(fk, env).equals(pt)) throw new Error('seal/open round trip failed');
    if (scopeStorage.run(query, () => column.mapFromDriverValue(colEnv)) !== text)
      throw new Error('column path round trip failed');

    tasks.push(
      {
        id: `enc/bare-buffer/${size}`,
        batch,
        run(n) {
          for (let i = 0; i < n; i++) sink.value = bareEncrypt(bufKey, pt);
        },
      },
      {
        id: `dec/bare-buffer/${size}`,
        batch,
        run(n) {
          for (let i = 0; i < n; i++) sink.value = bareDecrypt(bufKey, bufMsg);
        },
      },
      {
        id: `enc/bare-keyobject/${size}`,
        batch,
        run(n) {
          for (let i = 0; i < n; i++) sink.value = bareEncrypt(objKey, pt);
        },
      },
      {
        id: `dec/bare-keyobject/${size}`,
        batch,
        run(n) {
          for (let i = 0; i < n; i++) sink.value = bareDecrypt(objKey, objMsg);
        },
      },
      {
        id: `enc/ours/${size}`,
        batch,
        run(n) {
          for (let i = 0; i < n; i++) sink.value = seal(fk, pt);
        },
      },
      {
        id: `dec/ours/${size}`,
        batch,
        run(n) {
          for (let i = 0; i < n; i++) sink.value = open(fk, env);
        },
      },
      {
        id: `enc/column/${size}`,
        batch,
        run(n) {
          inBuildContext(build, () =>
            scopeStorage.run({ tenantId: TENANT }, () => {
              for (let i = 0; i < n; i++) sink.value = column.mapToDriverValue(text);
            }),
          );
        },
      },
      {
        id: `dec/column/${size}`,
        batch,
        run(n) {
          scopeStorage.run(query, () => {
            for (let i = 0; i < n; i++) sink.value = column.mapFromDriverValue(colEnv);
          });
        },
      },
    );
    // Only for the interleaved target ratios: the bare loop plus the UTF-8 decode a text column does.
    extra.push({
      id: `dec/bare-keyobject-utf8/${size}`,
      batch,
      run(n) {
        for (let i = 0; i < n; i++) sink.value = bareDecrypt(objKey, objMsg).toString();
      },
    });
    const peers = [
      cloakTasks(size, text),
      await awsEsdkTasks(size, pt, false),
      await awsEsdkTasks(size, pt, true),
    ];
    for (const p of peers) {
      tasks.push(p.encrypt, p.decrypt);
      const stem = p.encrypt.id.split('/')[1] as string;
      if (!rows.some((r) => r.stem === stem)) rows.push({ label: p.label, stem });
    }
  }

  const results = await measureRounds(tasks, { rounds, timeMs, warmupMs });
  const get = (op: string, stem: string, size: number) => results.get(`${op}/${stem}/${size}`) ?? [];

  for (const [op, title] of [
    ['enc', 'Encrypt'],
    ['dec', 'Decrypt'],
  ] as const) {
    const headers = ['implementation'];
    for (const size of SIZES) headers.push(sizeLabel(size), '× KeyObject', '× Buffer');
    const table = rows.map((r) => {
      const cells = [r.label];
      for (const size of SIZES) {
        const xs = get(op, r.stem, size);
        cells.push(
          fmtNs(median(xs)),
          fmtRatio(pairedRatio(xs, get(op, 'bare-keyobject', size))),
          fmtRatio(pairedRatio(xs, get(op, 'bare-buffer', size))),
        );
      }
      return cells;
    });
    console.log(`### ${title}, ns/op (median)\n`);
    console.log(markdownTable(headers, table));
    console.log('');
  }

  // The targets: each ratio again from 2,000 tightly interleaved pairs (bench/lib.ts
  // interleavedRatio), robust to the drifts of a shared machine that the rounds above see.
  const task = (id: string) => [...tasks, ...extra].find((t) => t.id === id)!;
  const pairs = ctx.quick ? 200 : 2000;
  const ratio = (a: string, b: string) => interleavedRatio(task(a), task(b), { pairs });
  const decKo = ratio('dec/ours/256', 'dec/bare-keyobject/256');
  const encKo = ratio('enc/ours/256', 'enc/bare-keyobject/256');
  const decBuf = ratio('dec/ours/256', 'dec/bare-buffer/256');
  const encBuf = ratio('enc/ours/256', 'enc/bare-buffer/256');
  const decCol = ratio('dec/column/256', 'dec/bare-keyobject/256');
  const encCol = ratio('enc/column/256', 'enc/bare-keyobject/256');
  const decText = ratio('dec/column/256', 'dec/bare-keyobject-utf8/256');
  console.log('### Targets at 256 B (judged against the bare KeyObject loop)\n');
  console.log(
    `_Ratios from ${pairs.toLocaleString('en-US')} interleaved pairs per figure. Against the Buffer-key loop: \`open\` ${fmtRatio(decBuf)}, \`seal\` ${fmtRatio(encBuf)}. Column path decrypt against the bare loop that also decodes UTF-8 (as a text column must): ${fmtRatio(decText)}._\n`,
  );
  checkTarget('crypto', 'decrypt 256 B, `encrypted.text` column path / bare loop', decCol, '<=', 1.1);
  checkTarget('crypto', 'encrypt 256 B, `encrypted.text` column path / bare loop', encCol, '<=', 1.0);
  checkTarget('crypto', 'decrypt 256 B, `open` / bare loop', decKo, '<=', 1.2);
  checkTarget('crypto', 'encrypt 256 B, `seal` / bare loop', encKo, '<=', 1.0);
  console.log('');
}

export const cryptoBench: Section = {
  name: 'crypto',
  title: 'Per-field encrypt / decrypt',
  run,
};
