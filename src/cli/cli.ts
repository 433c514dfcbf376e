import { parseArgs } from 'node:util';
import { ByokConfigError, isByokError, KeyStoreMissingError } from '../errors.ts';
import { CliConfigError, type LoadedConfig, loadConfig } from './config.ts';
import { type Context, EXIT, type Flags, UsageError } from './context.ts';
import { keysCommand } from './keys.ts';
import { migrateCommand } from './migrate.ts';
import { type Io, toJson } from './output.ts';
import { cliMessage, packageVersion } from './speak.ts';
import { translateStoreError } from '../store/errors.ts';

export { EXIT } from './context.ts';

export const USAGE = `Usage: drizzle-byok <command> [options]

Retrofit (encrypt existing plaintext columns online, resumably):
  migrate plan       [--table T]...                 what run would do: counts, column types, job state
  migrate run        [--table T]... [--tenant X]... encrypt plaintext (and re-encrypt old key versions)
                     [--batch-size N] [--chunk-size N] [--rate ROWS_PER_S] [--lease-ms N]
                     [--no-reencrypt] [--restart] [--skip-tenant-errors] [--no-wait] [--dry-run]
  migrate verify     [--table T]... [--tenant X]... [--shallow]
                                                    count plaintext / stale / unreadable values (exit 3 if any)
  migrate rollback   [--table T]... [--tenant X]... --yes [--dry-run]
                                                    decrypt back to plaintext
  migrate install                                   create the key store and checkpoint tables

Keys (one tenant's key lifecycle):
  keys status  <tenant>...                          mode, KEKs, health, data key versions
  keys enable  <tenant> KEK                         bring your own key (re-wraps data keys)
  keys rotate  <tenant> [KEK]                       new KEK(s) when given; else a new data key version
  keys disable <tenant>                             back to the platform key
  keys health [--tenant X]...                       check every BYOK tenant's keys (exit 3 if any is not ok)
  keys shred   <tenant> --confirm <tenant>          destroy every data key: the tenant's data is gone
               [--allow-no-keys]                    also for a tenant that has no data key (blocks the id)
  keys onboard <tenant> --aws|--gcp|--azure|--vault artifacts for the tenant's key admin: key policy,
               [--format text|json|shell|terraform]  role trust with the external id issued (and stored),
                                                    aws/gcloud commands, Terraform
       --aws --platform-principal ARN --tenant-account ID [--role-name N] [--key-alias alias/N]
             [--rotate-external-id]
       --gcp --service-account EMAIL --project ID [--key-ring R] [--key-id K]   (--aws, --gcp: --region R...)
       --azure --azure-principal OBJECT_ID --azure-subscription ID --azure-resource-group RG
             --azure-vault NAME --azure-location REGION [--azure-key K]
       --vault --vault-address URL [--vault-namespace NS] [--vault-mount M] [--vault-key K]
             [--vault-auth approle|kubernetes|jwt] [--vault-role R]
             [--k8s-service-account SA --k8s-namespace NS] [--jwt-subject S --jwt-audience A]
  keys rewrap-platform [--batch-size N]             after replacing the platform key: re-wrap data keys
                                                    under previousPlatformKeks (exit 3 if some remain)
  keys rewrap-moved <tenant>                        re-wrap data keys still under a key an alias left

  KEK: --kek NAME (from the config's \`keks\`)
     | --aws-key-arn ARN... [--aws-role-arn ARN --external-id ID] [--aws-region R]
       [--aws-endpoint URL] [--aws-sts-endpoint URL]            (credentials: the AWS default chain)
     | --gcp-key-name projects/.../cryptoKeys/K... [--gcp-credentials key.json]
       [--gcp-endpoint HOST[:PORT]] [--gcp-insecure]
     | --azure-key-id https://V.vault.azure.net/keys/K [--azure-tenant-id T --azure-client-id C
       (secret: env AZURE_CLIENT_SECRET) | --azure-managed-identity [--azure-client-id C]]
       [--azure-authority-host URL] [--azure-ca ca.pem]       (default: DefaultAzureCredential)
     | --vault-address URL --vault-key K [--vault-namespace NS] [--vault-mount M] [--vault-ca ca.pem]
       --vault-approle-role-id ID (secret id: env VAULT_SECRET_ID) | --vault-kubernetes-role R
       | --vault-jwt-role R --vault-jwt-file F | (token: env VAULT_TOKEN)

Options:
  --config PATH        config file (default: ./drizzle-byok.config.ts, .mts, .js, .mjs)
  --json               machine-readable output on stdout (errors too, as { ok: false, error })
  --dry-run            change nothing; show what would be done
  --no-progress        no progress output
  --progress-every S   seconds between progress lines when stderr is not a terminal (default 5)
  -h, --help           this help
  -v, --version        the drizzle-byok version

Exit codes: 0 ok · 1 failure · 2 usage/config error · 3 problems found (verify, health...) · 130 interrupted
`;

const OPTIONS = {
  config: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
  'allow-no-keys': { type: 'boolean' },
  table: { type: 'string', multiple: true },
  tenant: { type: 'string', multiple: true },
  'batch-size': { type: 'string' },
  'chunk-size': { type: 'string' },
  'lease-ms': { type: 'string' },
  'busy-timeout-ms': { type: 'string' },
  rate: { type: 'string' },
  'no-reencrypt': { type: 'boolean' },
  restart: { type: 'boolean' },
  'skip-tenant-errors': { type: 'boolean' },
  'no-wait': { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  'no-progress': { type: 'boolean' },
  'progress-every': { type: 'string' },
  yes: { type: 'boolean' },
  shallow: { type: 'boolean' },
  kek: { type: 'string', multiple: true },
  'aws-key-arn': { type: 'string', multiple: true },
  'aws-region': { type: 'string' },
  'aws-endpoint': { type: 'string' },
  'aws-sts-endpoint': { type: 'string' },
  'aws-role-arn': { type: 'string' },
  'external-id': { type: 'string' },
  'gcp-key-name': { type: 'string', multiple: true },
  'gcp-endpoint': { type: 'string' },
  'gcp-insecure': { type: 'boolean' },
  'gcp-credentials': { type: 'string' },
  'azure-key-id': { type: 'string', multiple: true },
  'azure-tenant-id': { type: 'string' },
  'azure-client-id': { type: 'string' },
  'azure-managed-identity': { type: 'boolean' },
  'azure-authority-host': { type: 'string' },
  'azure-ca': { type: 'string' },
  'azure-principal': { type: 'string' },
  'azure-subscription': { type: 'string' },
  'azure-resource-group': { type: 'string' },
  'azure-vault': { type: 'string' },
  'azure-location': { type: 'string' },
  'azure-key': { type: 'string' },
  azure: { type: 'boolean' },
  'vault-address': { type: 'string' },
  'vault-namespace': { type: 'string' },
  'vault-mount': { type: 'string' },
  'vault-key': { type: 'string' },
  'vault-ca': { type: 'string' },
  'vault-approle-role-id': { type: 'string' },
  'vault-kubernetes-role': { type: 'string' },
  'vault-jwt-role': { type: 'string' },
  'vault-jwt-file': { type: 'string' },
  'vault-auth': { type: 'string' },
  'vault-role': { type: 'string' },
  'k8s-service-account': { type: 'string' },
  'k8s-namespace': { type: 'string' },
  'jwt-subject': { type: 'string' },
  'jwt-audience': { type: 'string' },
  vault: { type: 'boolean' },
  confirm: { type: 'string' },
  aws: { type: 'boolean' },
  gcp: { type: 'boolean' },
  format: { type: 'string' },
  region: { type: 'string', multiple: true },
  'platform-principal': { type: 'string' },
  'tenant-account': { type: 'string' },
  'role-name': { type: 'string' },
  'key-alias': { type: 'string' },
  'rotate-external-id': { type: 'boolean' },
  'service-account': { type: 'string' },
  project: { type: 'string' },
  'key-ring': { type: 'string' },
  'key-id': { type: 'string' },
} as const;

const COMMON = ['config', 'json', 'help', 'version', 'no-progress', 'progress-every'];
const KEK_FLAGS = [
  'kek',
  'aws-key-arn',
  'aws-region',
  'aws-endpoint',
  'aws-sts-endpoint',
  'aws-role-arn',
  'external-id',
  'gcp-key-name',
  'gcp-endpoint',
  'gcp-insecure',
  'gcp-credentials',
  'azure-key-id',
  'azure-tenant-id',
  'azure-client-id',
  'azure-managed-identity',
  'azure-authority-host',
  'azure-ca',
  'vault-address',
  'vault-namespace',
  'vault-mount',
  'vault-key',
  'vault-ca',
  'vault-approle-role-id',
  'vault-kubernetes-role',
  'vault-jwt-role',
  'vault-jwt-file',
];
const BACKFILL = [
  'table',
  'tenant',
  'batch-size',
  'chunk-size',
  'lease-ms',
  'busy-timeout-ms',
  'rate',
  'dry-run',
  'restart',
  'no-wait',
];

/** Flags each command accepts (besides the common ones). */
const ALLOWED: Record<string, readonly string[]> = {
  'migrate plan': ['table'],
  'migrate run': [...BACKFILL, 'no-reencrypt', 'skip-tenant-errors'],
  'migrate verify': ['table', 'tenant', 'shallow', 'batch-size'],
  'migrate rollback': [...BACKFILL, 'yes'],
  'migrate install': [],
  'keys status': [],
  'keys enable': [...KEK_FLAGS, 'dry-run'],
  'keys rotate': [...KEK_FLAGS, 'dry-run'],
  'keys disable': ['dry-run'],
  'keys health': ['tenant'],
  'keys shred': ['confirm', 'dry-run', 'allow-no-keys'],
  'keys onboard': [
    'aws',
    'gcp',
    'format',
    'region',
    'platform-principal',
    'tenant-account',
    'role-name',
    'key-alias',
    'rotate-external-id',
    'service-account',
    'project',
    'key-ring',
    'key-id',
    'azure',
    'azure-principal',
    'azure-subscription',
    'azure-resource-group',
    'azure-vault',
    'azure-location',
    'azure-key',
    'vault',
    'vault-address',
    'vault-namespace',
    'vault-mount',
    'vault-key',
    'vault-auth',
    'vault-role',
    'k8s-service-account',
    'k8s-namespace',
    'jwt-subject',
    'jwt-audience',
  ],
  'keys rewrap-platform': ['batch-size'],
  'keys rewrap-moved': [],
};

export interface RunOptions {
  readonly cwd?: string;
  readonly signal?: AbortSignal;
}

/** Runs the CLI with `argv` (without `node` and the script). Returns the exit code. */
export async function runCli(argv: readonly string[], io: Io, options: RunOptions = {}): Promise<number> {
  let json = argv.includes('--json');
  let loaded: LoadedConfig | undefined;
  try {
    let parsed: ReturnType<
      typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true; strict: true }>
    >;
    try {
      parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
    } catch (e) {
      throw new UsageError(`${(e as Error).message}. See drizzle-byok --help`);
    }
    const flags = parsed.values as Flags;
    json = flags.json === true;
    const [group, sub, ...args] = parsed.positionals;
    if (flags.version && !flags.help) {
      io.stdout.write(
        json ? `${toJson({ version: packageVersion() })}\n` : `drizzle-byok ${packageVersion()}\n`,
      );
      return EXIT.ok;
    }
    if (flags.help || group === undefined || group === 'help') {
      io.stdout.write(USAGE);
      return group === undefined && !flags.help ? EXIT.usage : EXIT.ok;
    }
    const name = `${group} ${sub ?? ''}`.trim();
    const allowed = ALLOWED[name];
    if (allowed === undefined) {
      const hint =
        group === 'migrate' || group === 'keys'
          ? `${group} commands: ${Object.keys(ALLOWED)
              .filter((k) => k.startsWith(`${group} `))
              .map((k) => k.slice(group.length + 1))
              .join(', ')}`
          : 'commands: migrate plan|run|verify|rollback|install, keys status|enable|rotate|disable|health|shred|onboard|rewrap-platform|rewrap-moved';
      throw new UsageError(`unknown command "${name}": ${hint}. See drizzle-byok --help`);
    }
    for (const f of Object.keys(flags)) {
      if (!COMMON.includes(f) && !allowed.includes(f)) throw new UsageError(`${name} does not take --${f}`);
    }
    const cwd = options.cwd ?? process.cwd();
    const ctx: Context = {
      io,
      flags,
      args,
      json,
      signal: options.signal ?? new AbortController().signal,
      config: async () => {
        loaded ??= await loadConfig(cwd, flags.config);
        return loaded;
      },
      out(value, human) {
        io.stdout.write(json ? `${toJson(value)}\n` : `${human()}\n`);
      },
      say(line) {
        if (!json) io.stdout.write(`${line}\n`);
      },
    };
    if (group === 'migrate') return await migrateCommand(sub!, ctx);
    return await keysCommand(sub!, ctx);
  } catch (thrown) {
    const e = translateStoreError(thrown);
    const code = exitCodeOf(e);
    const err = e as { code?: unknown; message?: unknown; tenantId?: unknown };
    const message = cliMessage(failureText(e), typeof err?.code === 'string' ? err.code : undefined);
    if (json) {
      io.stdout.write(
        `${toJson({ ok: false, error: { code: typeof err?.code === 'string' ? err.code : 'ERR_UNKNOWN', message, ...(typeof err?.tenantId === 'string' ? { tenantId: err.tenantId } : {}) } })}\n`,
      );
    } else {
      io.stderr.write(
        `drizzle-byok: ${code === EXIT.usage ? '' : 'error: '}${message}${isByokError(e) && e.code !== ByokConfigError.code ? ` [${e.code}]` : ''}\n`,
      );
    }
    return code;
  } finally {
    await loaded?.close();
  }
}

/**
 * The text of a failure. A Drizzle query error's own message is the SQL text with its parameters:
 * the CLI prints the database's error (its cause) instead, never the parameters.
 */
function failureText(e: unknown): string {
  const err = e as { name?: unknown; message?: unknown; cause?: unknown } | null;
  if (err?.name === 'DrizzleQueryError') {
    const cause = err.cause as { message?: unknown; code?: unknown } | undefined;
    const m = typeof cause?.message === 'string' ? cause.message : 'unknown database error';
    return `a database query failed: ${m}${typeof cause?.code === 'string' ? ` (PostgreSQL ${cause.code})` : ''}`;
  }
  return typeof err?.message === 'string' ? err.message : String(e);
}

function exitCodeOf(e: unknown): number {
  // By code, not only by class: the config may load another copy of the library than the CLI's.
  // A missing key store is set-up, like a missing config file: exit 2 (see EXIT).
  if (
    e instanceof UsageError ||
    e instanceof CliConfigError ||
    (isByokError(e) && (e.code === ByokConfigError.code || e.code === KeyStoreMissingError.code))
  ) {
    return EXIT.usage;
  }
  return EXIT.failure;
}
