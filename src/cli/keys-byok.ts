/**
 * `drizzle-byok keys onboard`, `keys rewrap-platform` and `keys rewrap-moved`: onboarding artifacts
 * for a tenant's key administrator, platform key replacement, and following a moved alias.
 */
import type { Onboarding, OnboardingOptions } from '../keys/onboarding.ts';
import { type Context, EXIT, intFlag, UsageError } from './context.ts';
import { fmtInt, Progress } from './output.ts';

const FORMATS = ['text', 'json', 'shell', 'terraform'] as const;

export async function onboardCommand(ctx: Context): Promise<number> {
  if (ctx.args.length !== 1)
    throw new UsageError(`keys onboard needs exactly one tenant id (got ${ctx.args.length})`);
  const tenant = ctx.args[0]!;
  const f = ctx.flags;
  if ((f.aws === true) === (f.gcp === true)) throw new UsageError('keys onboard needs one of --aws or --gcp');
  const format = (f.format as string | undefined) ?? (ctx.json ? 'json' : 'text');
  if (!(FORMATS as readonly string[]).includes(format)) {
    throw new UsageError(`--format must be one of ${FORMATS.join(', ')} (got ${JSON.stringify(format)})`);
  }
  const regions = (f.region as string[] | undefined) ?? [];
  if (regions.length === 0) throw new UsageError('keys onboard needs --region (once per region of the key)');
  const need = (name: string): string => {
    const v = f[name];
    if (typeof v !== 'string' || v === '')
      throw new UsageError(`keys onboard --${f.aws ? 'aws' : 'gcp'} needs --${name}`);
    return v;
  };
  const awsOnly = ['platform-principal', 'tenant-account', 'role-name', 'key-alias', 'rotate-external-id'];
  const gcpOnly = ['service-account', 'project', 'key-ring', 'key-id'];
  for (const name of f.aws ? gcpOnly : awsOnly) {
    if (f[name] !== undefined) throw new UsageError(`--${name} goes with --${f.aws ? 'gcp' : 'aws'}`);
  }
  const options: OnboardingOptions = f.aws
    ? {
        provider: 'aws',
        platformPrincipal: need('platform-principal'),
        tenantAccountId: need('tenant-account'),
        regions,
        ...(f['role-name'] === undefined ? {} : { roleName: f['role-name'] as string }),
        ...(f['key-alias'] === undefined ? {} : { keyAlias: f['key-alias'] as string }),
        ...(f['rotate-external-id'] ? { rotateExternalId: true } : {}),
      }
    : {
        provider: 'gcp',
        serviceAccount: need('service-account'),
        project: need('project'),
        regions,
        ...(f['key-ring'] === undefined ? {} : { keyRing: f['key-ring'] as string }),
        ...(f['key-id'] === undefined ? {} : { key: f['key-id'] as string }),
      };
  const loaded = await ctx.config();
  const a = await loaded.keyring.onboarding(tenant, options);
  if (format === 'json') ctx.io.stdout.write(`${JSON.stringify(a, null, 2)}\n`);
  else if (format === 'shell') ctx.io.stdout.write(a.shell);
  else if (format === 'terraform') ctx.io.stdout.write(a.terraform);
  else ctx.io.stdout.write(`${onboardingText(a)}\n`);
  return EXIT.ok;
}

function onboardingText(a: Onboarding): string {
  const j = (v: unknown) => JSON.stringify(v, null, 2);
  if (a.provider === 'aws') {
    return [
      `Tenant ${a.tenantId}: bring your own AWS KMS key.`,
      '',
      `External id (issued to this tenant, stored; the role trust policy requires it): ${a.externalId}`,
      `Role the platform assumes: ${a.roleArn}`,
      `Key (alias) ARN${a.keyArns.length > 1 ? 's' : ''}: ${a.keyArns.join(', ')}`,
      '',
      'Key policy (DescribeKey has its own statement: it carries no encryption context):',
      j(a.keyPolicy),
      '',
      'Role trust policy:',
      j(a.roleTrustPolicy),
      '',
      'The tenant runs `--format shell` (aws CLI) or `--format terraform`; then the platform runs:',
      `  ${a.enableCommand}`,
    ].join('\n');
  }
  return [
    `Tenant ${a.tenantId}: bring your own Cloud KMS key.`,
    '',
    `Key name${a.keyNames.length > 1 ? 's' : ''}: ${a.keyNames.join(', ')}`,
    'IAM bindings on the key:',
    ...a.iamBindings.map((b) => `  ${b.role}  ${b.member}`),
    '',
    'The tenant runs `--format shell` (gcloud) or `--format terraform`; then the platform runs:',
    `  ${a.enableCommand}`,
  ].join('\n');
}

export async function rewrapPlatformCommand(ctx: Context): Promise<number> {
  if (ctx.args.length > 0) throw new UsageError('keys rewrap-platform takes no arguments');
  const loaded = await ctx.config();
  const kr = loaded.keyring;
  const previous = kr.previousPlatformKeyRefs;
  if (previous.length === 0) {
    throw new UsageError(
      'keys rewrap-platform moves data keys from previous platform keys to the current one, but the ' +
        'config names none: set the new key as platformKek and the old one in previousPlatformKeks',
    );
  }
  const every = ctx.flags['progress-every'] === undefined ? 5 : intFlag(ctx.flags, 'progress-every')!;
  const bar = new Progress(ctx.io, {
    json: ctx.json,
    everyMs: every * 1000,
    enabled: ctx.flags['no-progress'] !== true,
  });
  const batchSize = intFlag(ctx.flags, 'batch-size');
  ctx.say(`re-wrapping data keys under ${previous.join(', ')} with ${kr.platformKeyRef}`);
  let r: Awaited<ReturnType<typeof kr.rewrapPlatform>>;
  try {
    r = await kr.rewrapPlatform({
      ...(batchSize === undefined ? {} : { batchSize }),
      onProgress: (p) =>
        bar.update({
          label: 'rewrap-platform',
          done: p.dataKeys,
          total: p.total,
          rate: p.dataKeysPerSecond,
          eta: p.etaSeconds,
        }),
    });
  } finally {
    bar.end();
  }
  ctx.out({ ok: r.remaining === 0, platformKey: kr.platformKeyRef, ...r }, () =>
    [
      `${fmtInt(r.dataKeys)} data key(s) re-wrapped and ${fmtInt(r.secrets)} KEK secret(s) re-sealed under ${kr.platformKeyRef}.`,
      r.remaining === 0
        ? 'Nothing is left under an older platform key: remove it from previousPlatformKeks.'
        : `${fmtInt(r.remaining)} still under a platform key this config does not know: add it to previousPlatformKeks and run again.`,
    ].join('\n'),
  );
  return r.remaining === 0 ? EXIT.ok : EXIT.problems;
}

export async function rewrapMovedCommand(ctx: Context): Promise<number> {
  if (ctx.args.length !== 1)
    throw new UsageError(`keys rewrap-moved needs exactly one tenant id (got ${ctx.args.length})`);
  const loaded = await ctx.config();
  const r = await loaded.keyring.rewrapMovedKeys(ctx.args[0]!);
  ctx.out(
    r,
    () =>
      `tenant ${r.tenantId}: ${fmtInt(r.rewrapped)} data key wrap(s) moved to the key${r.status.keks.length > 1 ? 's' : ''} ` +
      `the KEK reference${r.status.keks.length > 1 ? 's' : ''} name now (${r.status.keks.map((k) => k.currentKeyId ?? k.keyRef).join(', ')})`,
  );
  return EXIT.ok;
}
