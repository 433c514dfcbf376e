/**
 * `npm run bench -- providers`: unwrap latency of one data key through each key manager's real
 * client against its local server (same process, loopback): cold (a new KEK object: new client,
 * connection, credential or login) and warm (the same KEK again). The local servers answer in
 * microseconds, so the figures are the client side's own cost, not a cloud round trip.
 */
import { randomBytes } from 'node:crypto';
import type { Kek } from '../src/index.ts';
import {
  awsHarness,
  azureHarness,
  gcpHarness,
  type ProviderHarness,
  vaultHarness,
} from '../test/helpers/providers.ts';
import { type BenchContext, fmtMs, markdownTable, median, printSectionHeader, type Section } from './lib.ts';

async function measure(h: ProviderHarness, rounds: number): Promise<[string, string, string, string]> {
  await h.start();
  try {
    const key = await h.newKey();
    const context = { tenantId: 'bench', dekId: '00000000-0000-4000-8000-000000000001' };
    const first = key.kek();
    const w = first.wrapIdentified
      ? await first.wrapIdentified(randomBytes(32), context)
      : { wrapped: await first.wrap(randomBytes(32), context), wrappedBy: undefined };
    const cold: number[] = [];
    const warm: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const kek: Kek = key.kek();
      let t = performance.now();
      await kek.unwrap(w.wrapped, context, w.wrappedBy);
      cold.push(performance.now() - t);
      t = performance.now();
      await kek.unwrap(w.wrapped, context, w.wrappedBy);
      warm.push(performance.now() - t);
      await kek.close?.();
    }
    h.resetCounters();
    const kek = key.kek();
    await kek.unwrap(w.wrapped, context, w.wrappedBy);
    const calls = h.unwraps();
    await kek.close?.();
    await first.close?.();
    return [h.name, fmtMs(median(cold)), fmtMs(median(warm)), String(calls)];
  } finally {
    await h.stop();
  }
}

export const providersBench: Section = {
  name: 'providers',
  title: 'Key managers: cold and warm unwrap of one data key against the local servers',
  async run(ctx: BenchContext): Promise<void> {
    const rounds = ctx.quick ? 5 : 30;
    printSectionHeader(this.title, [
      `median of ${rounds} rounds; cold = a new KEK object (client, connection, credential / login), warm = the same KEK again`,
      'heartbeat cost: one unwrap per active KEK of each watched tenant per interval (test/lifecycle-providers.test.ts)',
    ]);
    const rows = [];
    for (const h of [awsHarness(), gcpHarness(), azureHarness(), vaultHarness()])
      rows.push(await measure(h, rounds));
    console.log(markdownTable(['provider', 'cold unwrap', 'warm unwrap', 'unwrap calls per unwrap'], rows));
  },
};
