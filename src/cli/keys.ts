import { readFileSync } from 'node:fs';
import { KeyNotFoundError } from '../errors.ts';
import { assertTenantId } from '../scope.ts';
import { verifyKek } from '../keys/lifecycle/index.ts';
import type { TenantStatus } from '../keys/lifecycle/index.ts';
import type { Kek } from '../kms/kek.ts';
import { issuedExternalId } from '../keys/onboarding.ts';
import { type Context, EXIT, type Flags, UsageError } from './context.ts';
import { onboardCommand, rewrapMovedCommand, rewrapPlatformCommand } from './keys-byok.ts';
import type { LoadedConfig } from './config.ts';

export async function keysCommand(sub: string, ctx: Context): Promise<number> {
  // Tenant ids follow the one rule of every other path, checked before anything is loaded.
  for (const [what, ids] of [
    ['tenant id', ctx.args],
    ['--tenant', (ctx.flags.tenant as readonly string[] | undefined) ?? []],
  ] as const) {
    for (const id of ids) {
      try {
        assertTenantId(id, `${what} "${id.length > 40 ? `${id.slice(0, 40)}…` : id}"`);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    }
  }
  if (sub === 'onboard') return onboardCommand(ctx);
  if (sub === 'rewrap-platform') return rewrapPlatformCommand(ctx);
  const loaded = await ctx.config();
  const kr = loaded.keyring;
  const dry = ctx.flags['dry-run'] === true;
  switch (sub) {
    case 'status': {
      if (ctx.args.length === 0) throw new UsageError('keys status needs at least one tenant id');
      const all: TenantStatus[] = [];
      for (const t of ctx.args) all.push(await kr.status(t));
      ctx.out(all.length === 1 ? all[0] : all, () => all.map(statusText).join('\n\n'));
      return EXIT.ok;
    }
    case 'enable':
    case 'rotate': {
      const tenant = oneTenant(ctx, sub);
      const keks = await keksFromFlags(ctx.flags, loaded, tenant);
      if (sub === 'rotate' && keks.length === 0) {
        if (dry) {
          const s = await kr.status(tenant);
          const next = Math.max(0, ...s.dekVersions.map((d) => d.version)) + 1;
          ctx.out(
            { dryRun: true, tenantId: tenant, wouldCreateVersion: next, status: s },
            () => `[dry run] would start data key version ${next} of tenant ${tenant}; nothing changed`,
          );
          return EXIT.ok;
        }
        const r = await kr.rotateDek(tenant);
        ctx.out(
          r,
          () =>
            `tenant ${tenant}: data key version ${r.version} is now active for new writes. Older versions stay ` +
            'readable; `drizzle-byok migrate run` re-encrypts the rows still under them.',
        );
        return EXIT.ok;
      }
      if (keks.length === 0) {
        throw new UsageError(
          `keys ${sub} needs a KEK: --kek NAME, --aws-key-arn ARN, --gcp-key-name NAME, --azure-key-id URL or --vault-address URL`,
        );
      }
      try {
        if (dry) {
          for (const k of keks) await verifyKek(kr, tenant, k);
          ctx.out(
            { dryRun: true, tenantId: tenant, verified: keks.map((k) => k.keyRef) },
            () =>
              `[dry run] ${keks.map((k) => k.keyRef).join(', ')}: verified (state, usage, wrap/unwrap round trip); nothing changed`,
          );
          return EXIT.ok;
        }
        const s = sub === 'enable' ? await kr.enableByok(tenant, keks) : await kr.rotateKek(tenant, keks);
        ctx.out(
          s,
          () => `${sub === 'enable' ? 'BYOK enabled' : 'KEK rotated'} for tenant ${tenant}\n${statusText(s)}`,
        );
        return EXIT.ok;
      } finally {
        for (const k of keks) await k.close?.().catch(() => undefined);
      }
    }
    case 'disable': {
      const tenant = oneTenant(ctx, sub);
      if (dry) {
        const s = await kr.status(tenant);
        ctx.out(
          { dryRun: true, status: s },
          () => `[dry run] would move tenant ${tenant} (now ${s.mode}) to the platform key; nothing changed`,
        );
        return EXIT.ok;
      }
      const s = await kr.disableByok(tenant);
      ctx.out(
        s,
        () =>
          `BYOK disabled for tenant ${tenant}: data keys are wrapped by the platform key\n${statusText(s)}`,
      );
      return EXIT.ok;
    }
    case 'health': {
      if (ctx.args.length > 0)
        throw new UsageError('keys health takes no arguments (use --tenant to restrict it)');
      const all = await kr.checkHealth(ctx.flags.tenant === undefined ? {} : { tenants: ctx.flags.tenant });
      const bad = all.filter((s) => s.health !== 'ok');
      ctx.out({ ok: bad.length === 0, tenants: all }, () =>
        [
          `${all.length} BYOK tenant(s) checked: ${all.length - bad.length} ok, ${bad.length} not ok`,
          ...all.map(
            (s) =>
              `  ${s.tenantId.padEnd(24)} ${s.health.padEnd(8)} ${s.keks.map((k) => `${k.keyRef} (${k.health})`).join(', ')}${s.lastError ? `  ${s.lastError}` : ''}`,
          ),
        ].join('\n'),
      );
      return bad.length === 0 ? EXIT.ok : EXIT.problems;
    }
    case 'shred': {
      const tenant = oneTenant(ctx, sub);
      const confirm = ctx.flags.confirm;
      if (confirm !== tenant) {
        throw new UsageError(
          `keys shred destroys every data key of tenant ${tenant}: its encrypted data can never be read again. ` +
            `Repeat the tenant id to confirm: --confirm ${tenant}`,
        );
      }
      if (dry) {
        const s = await kr.status(tenant);
        if (s.dekVersions.length === 0 && ctx.flags['allow-no-keys'] !== true) {
          throw new KeyNotFoundError(
            `[dry run] tenant ${JSON.stringify(tenant)} has no data keys: keys shred would refuse. Check the tenant id; ` +
              'add --allow-no-keys to block this id anyway',
            { tenantId: tenant },
          );
        }
        ctx.out(
          { dryRun: true, status: s },
          () =>
            `[dry run] would destroy ${s.dekVersions.length} data key version(s) of tenant ${tenant}; nothing changed`,
        );
        return EXIT.ok;
      }
      const r = await kr.shred(tenant, {
        confirm: confirm as string,
        ...(ctx.flags['allow-no-keys'] === true ? { allowNoKeys: true } : {}),
      });
      ctx.out(r, () => `tenant ${tenant} shredded: ${r.destroyedVersions} data key version(s) destroyed`);
      return EXIT.ok;
    }
    case 'rewrap-moved':
      return rewrapMovedCommand(ctx);
    default:
      throw new UsageError(`unknown command "keys ${sub}"`);
  }
}

function oneTenant(ctx: Context, sub: string): string {
  if (ctx.args.length !== 1)
    throw new UsageError(`keys ${sub} needs exactly one tenant id (got ${ctx.args.length})`);
  return ctx.args[0]!;
}

/** The KEK(s) described on the command line: config-named, AWS KMS or Cloud KMS (one kind at a time). */
async function keksFromFlags(f: Flags, loaded: LoadedConfig, tenant: string): Promise<Kek[]> {
  const named = f.kek ?? [];
  const aws = f['aws-key-arn'] ?? [];
  const gcp = f['gcp-key-name'] ?? [];
  const vault = f['vault-address'] === undefined ? [] : [f['vault-address'] as string];
  const azure = (f['azure-key-id'] as string[] | undefined) ?? [];
  const kinds = [named.length > 0, aws.length > 0, gcp.length > 0, azure.length > 0, vault.length > 0].filter(
    Boolean,
  ).length;
  if (kinds > 1) {
    throw new UsageError(
      'give KEKs of one kind: --kek, --aws-key-arn, --gcp-key-name, --azure-key-id or --vault-address',
    );
  }
  const azureOnly = [
    'azure-tenant-id',
    'azure-client-id',
    'azure-managed-identity',
    'azure-authority-host',
    'azure-ca',
  ].filter((k) => f[k] !== undefined);
  if (azure.length === 0 && azureOnly.length > 0)
    throw new UsageError(`--${azureOnly[0]} needs --azure-key-id`);
  const vaultOnly = [
    'vault-namespace',
    'vault-mount',
    'vault-key',
    'vault-ca',
    'vault-approle-role-id',
    'vault-kubernetes-role',
    'vault-jwt-role',
    'vault-jwt-file',
  ].filter((k) => f[k] !== undefined);
  if (vault.length === 0 && vaultOnly.length > 0)
    throw new UsageError(`--${vaultOnly[0]} needs --vault-address`);
  const awsOnly = ['aws-region', 'aws-endpoint', 'aws-sts-endpoint', 'aws-role-arn', 'external-id'].filter(
    (k) => f[k] !== undefined,
  );
  const gcpOnly = ['gcp-endpoint', 'gcp-insecure', 'gcp-credentials'].filter((k) => f[k] !== undefined);
  if (aws.length === 0 && awsOnly.length > 0) throw new UsageError(`--${awsOnly[0]} needs --aws-key-arn`);
  if (gcp.length === 0 && gcpOnly.length > 0) throw new UsageError(`--${gcpOnly[0]} needs --gcp-key-name`);
  if (named.length > 0) {
    const out: Kek[] = [];
    for (const n of named) {
      const fn = loaded.config.keks?.[n];
      if (fn === undefined) {
        const known = Object.keys(loaded.config.keks ?? {});
        throw new UsageError(
          `no KEK named ${n} in ${loaded.path} (${known.length > 0 ? `known: ${known.join(', ')}` : 'the config has no `keks`'})`,
        );
      }
      const k = await fn(tenant);
      out.push(...(Array.isArray(k) ? (k as Kek[]) : [k as Kek]));
    }
    return out;
  }
  if (aws.length > 0) {
    const { awsKms } = await import('../kms/aws/index.ts');
    const roleArn = f['aws-role-arn'] as string | undefined;
    let externalId = f['external-id'] as string | undefined;
    if (roleArn === undefined && externalId !== undefined) {
      throw new UsageError('--external-id needs --aws-role-arn (the role whose trust policy requires it)');
    }
    if (roleArn !== undefined && externalId === undefined) {
      // The external id `keys onboard` issued to this tenant (enableByok checks it in any case).
      externalId = (await issuedExternalId(loaded.keyring, tenant)) ?? undefined;
      if (externalId === undefined) {
        throw new UsageError(
          `--aws-role-arn needs --external-id, or an external id issued by \`drizzle-byok keys onboard ${tenant} --aws\``,
        );
      }
    }
    return aws.map((keyArn) =>
      awsKms({
        keyArn,
        ...(roleArn === undefined ? {} : { auth: { type: 'assume-role', roleArn, externalId: externalId! } }),
        ...(f['aws-region'] === undefined ? {} : { region: f['aws-region'] as string }),
        ...(f['aws-endpoint'] === undefined ? {} : { endpoint: f['aws-endpoint'] as string }),
        ...(f['aws-sts-endpoint'] === undefined ? {} : { stsEndpoint: f['aws-sts-endpoint'] as string }),
      }),
    );
  }
  if (gcp.length > 0) {
    const { gcpKms } = await import('../kms/gcp/index.ts');
    const endpoint = f['gcp-endpoint'] as string | undefined;
    let host: string | undefined;
    let port: number | undefined;
    if (endpoint !== undefined) {
      const m = /^(.+?)(?::(\d+))?$/.exec(endpoint);
      host = m?.[1];
      port = m?.[2] === undefined ? undefined : Number(m[2]);
    }
    const file = f['gcp-credentials'] as string | undefined;
    let key: string | undefined;
    if (file !== undefined) {
      try {
        key = readFileSync(file, 'utf8');
      } catch {
        throw new UsageError(`--gcp-credentials: cannot read ${file}`);
      }
    }
    return gcp.map((keyName) =>
      gcpKms({
        keyName,
        ...(key === undefined ? {} : { credentials: { type: 'service-account', key } }),
        ...(host === undefined ? {} : { apiEndpoint: host }),
        ...(port === undefined ? {} : { port }),
        ...(f['gcp-insecure'] ? { insecure: true } : {}),
      }),
    );
  }
  if (azure.length > 0) {
    const { azureKeksFromFlags } = await import('./keys-azure.ts');
    return azureKeksFromFlags(f, azure);
  }
  if (vault.length > 0) {
    const { vaultKekFromFlags } = await import('./keys-vault.ts');
    return [vaultKekFromFlags(f, vault[0]!)];
  }
  return [];
}

function date(d: Date | null): string {
  return d === null ? 'never' : d.toISOString();
}

export function statusText(s: TenantStatus): string {
  const lines = [
    `tenant ${s.tenantId}: mode ${s.mode}, state ${s.state}, health ${s.health} (last verified ${date(s.lastVerifiedAt)})`,
  ];
  if (s.lastError) lines.push(`  last error: ${s.lastError}`);
  for (const k of s.keks) {
    lines.push(
      `  KEK ${k.keyRef}  ${k.kind}${k.region ? ` ${k.region}` : ''}  priority ${k.priority}  ${k.health}` +
        (k.lastError ? `  (${k.lastError})` : ''),
    );
    if (k.currentKeyId !== null && k.currentKeyId !== k.keyRef)
      lines.push(`    now resolves to ${k.currentKeyId}`);
    if (k.moved > 0) {
      lines.push(
        `    ${k.moved} data key(s) still wrapped under another key (${k.wrappedBy
          .filter((w) => w.keyId !== null && w.keyId !== k.currentKeyId)
          .map((w) => w.keyId)
          .join(', ')}): \`drizzle-byok keys rewrap-moved ${s.tenantId}\` before disabling it`,
      );
    }
  }
  if (s.keks.length === 0 && s.mode !== 'none') lines.push('  KEK: the platform key');
  for (const d of s.dekVersions) {
    lines.push(
      `  DEK v${d.version}  ${d.state}  created ${date(d.createdAt)}  wrapped under ${d.wrappedUnder.join(', ') || '-'}`,
    );
  }
  if (s.progress !== null && s.progress !== undefined)
    lines.push(`  in progress: ${JSON.stringify(s.progress)}`);
  return lines.join('\n');
}
