/**
 * The BYOK lifecycle, one suite for every key manager: enable, rotate the KEK, rotate the key's own
 * version, disable, revoke and restore (seen by the heartbeat), shred, health, heartbeat cost, and
 * failover between two KEKs of different providers. Real clients, local servers speaking the real
 * wire protocols, real PostgreSQL.
 */
import { randomBytes } from 'node:crypto';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localKek, TenantShreddedError, withTenant } from '../src/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import {
  awsHarness,
  azureHarness,
  gcpHarness,
  type ProviderHarness,
  vaultHarness,
} from './helpers/providers.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

const providers: ProviderHarness[] = [awsHarness(), gcpHarness(), azureHarness(), vaultHarness()];

describe.each(providers.map((p, i) => ({ p, other: providers[(i + 1) % providers.length]!, name: p.name })))(
  'BYOK lifecycle on $name (real client, local server)',
  ({ p, other }) => {
    let e: EncryptedDb;
    beforeAll(async () => {
      await p.start();
      await other.start();
      e = await setupEncryptedDb(MAIN_DRIVER, {
        kek: localKek({ key: randomBytes(32) }),
        keyring: {
          kekFactories: { [p.kind]: p.factory, [other.kind]: other.factory },
          cache: { maxAgeMs: 60_000 },
          heartbeat: false,
        },
      });
    });
    afterAll(async () => {
      await e?.close();
      await p.stop();
      await other.stop();
    });

    const write = (t: string, name: string) =>
      withTenant(t, () => e.db.insert(e.s.patients).values({ tenantId: t, name }));
    const read = async (t: string) =>
      (
        await withTenant(t, () =>
          e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
        )
      )
        .map((r) => r.n)
        .sort();

    it('enable: verified, existing data keys re-wrapped, readable by a fresh cache with one unwrap per data key', async () => {
      const T = uniqueTenant('en');
      await write(T, 'a');
      await e.keyring.rotateDek(T);
      await write(T, 'b');
      const key = await p.newKey();
      const st = await e.keyring.enableByok(T, key.kek());
      expect(st).toMatchObject({ mode: 'byok', state: 'active', health: 'ok' });
      expect(st.keks.map((k) => [k.kind, k.keyRef])).toEqual([[p.kind, key.keyRef]]);
      expect(st.dekVersions.map((v) => v.wrappedUnder)).toEqual([[key.keyRef], [key.keyRef]]);
      e.keyring.clearCache();
      p.resetCounters();
      expect(await read(T)).toEqual(['a', 'b']);
      expect(p.unwraps()).toBe(2);
    });

    it('rotate KEK: re-wrapped under the new key; the old key revoked loses nothing', async () => {
      const T = uniqueTenant('rk');
      await write(T, 'kept');
      const k1 = await p.newKey();
      const k2 = await p.newKey();
      await e.keyring.enableByok(T, k1.kek());
      const st = await e.keyring.rotateKek(T, k2.kek());
      expect(st.keks.map((k) => k.keyRef)).toEqual([k2.keyRef]);
      await k1.revoke();
      e.keyring.clearCache();
      expect(await read(T)).toEqual(['kept']);
    });

    it("rotate the key's own version: nothing stranded; rewrapMovedKeys moves the wraps, then the old version can be retired", async () => {
      const T = uniqueTenant('rv');
      await write(T, 'old version');
      const key = await p.newKey();
      await e.keyring.enableByok(T, key.kek());
      await key.rotateVersion();
      e.keyring.clearCache();
      expect(await read(T)).toEqual(['old version']);
      await write(T, 'new version');
      const moved = await e.keyring.rewrapMovedKeys(T);
      expect(moved.rewrapped).toBe(1);
      await key.retireOldVersions();
      e.keyring.clearCache();
      expect(await read(T)).toEqual(['new version', 'old version']);
    });

    it('health: checkHealth describes the key and records it ok', async () => {
      const T = uniqueTenant('hl');
      await write(T, 'x');
      const key = await p.newKey();
      await e.keyring.enableByok(T, key.kek());
      await e.keyring.checkHealth({ tenants: [T] });
      const st = await e.keyring.status(T);
      expect(st.health).toBe('ok');
      expect(st.keks[0]!.health).toBe('ok');
    });

    it('revoke and restore: the heartbeat makes one unwrap per active tenant, sees the refusal, reads fail, restore recovers', async () => {
      const T = uniqueTenant('rev');
      await write(T, 'secret');
      const key = await p.newKey();
      await e.keyring.enableByok(T, key.kek());
      e.keyring.clearCache();
      expect(await read(T)).toEqual(['secret']);
      const hb = e.keyring.startHeartbeat({ intervalMs: 3_600_000 });
      try {
        p.resetCounters();
        const tick = await hb.tick();
        expect(tick).toMatchObject({ tenants: 1, kmsCalls: 1, refused: [] });
        expect(p.unwraps()).toBe(1);
        await key.revoke();
        expect((await hb.tick()).refused).toEqual([T]);
        await expect(read(T)).rejects.toBeInstanceOf(p.revokedAs);
        expect((await e.keyring.status(T)).health).toBe('error');
        await key.restore();
        expect((await hb.tick()).recovered).toEqual([T]);
        expect(await read(T)).toEqual(['secret']);
        expect((await e.keyring.status(T)).health).toBe('ok');
      } finally {
        await hb.stop();
      }
    });

    it('disable: back under the platform key; the tenant key revoked afterwards changes nothing', async () => {
      const T = uniqueTenant('dis');
      await write(T, 'home');
      const key = await p.newKey();
      await e.keyring.enableByok(T, key.kek());
      const st = await e.keyring.disableByok(T);
      expect(st.mode).toBe('platform');
      await key.revoke();
      e.keyring.clearCache();
      expect(await read(T)).toEqual(['home']);
    });

    it('shred: every wrapped data key destroyed, the rows unreadable for good', async () => {
      const T = uniqueTenant('sh');
      await write(T, 'gone');
      const key = await p.newKey();
      await e.keyring.enableByok(T, key.kek());
      await e.keyring.shred(T, { confirm: T });
      e.keyring.clearCache();
      await expect(read(T)).rejects.toBeInstanceOf(TenantShreddedError);
    });

    it(`failover: two KEKs of different providers (${p.name} and ${other.name}); an outage of one is served by the other`, async () => {
      const T = uniqueTenant('fo');
      await write(T, 'both');
      const mine = await p.newKey();
      const theirs = await other.newKey();
      const st = await e.keyring.enableByok(T, [mine.kek(), theirs.kek()]);
      expect(st.dekVersions[0]!.wrappedUnder.sort()).toEqual([mine.keyRef, theirs.keyRef].sort());
      p.outage();
      try {
        e.keyring.clearCache();
        other.resetCounters();
        expect(await read(T)).toEqual(['both']);
        expect(other.unwraps()).toBe(1);
      } finally {
        p.recover();
      }
      other.outage();
      try {
        e.keyring.clearCache();
        expect(await read(T)).toEqual(['both']);
      } finally {
        other.recover();
      }
    });
  },
);
