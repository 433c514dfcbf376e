/**
 * The dependency rules of src/ (docs/architecture.md explains them). Run by `npm run check:layers`,
 * part of `npm test`; test/layers.test.ts shows each rule catching a deliberate violation.
 *
 * Layers, lowest first. A layer imports only layers below it (and `src/errors.ts`, the one error
 * module every layer shares). The tenant scope sits below `keys/`: the key store's own queries run
 * outside it (`scopeStorage.exit`) and the keyring offers `withTenant` as a method.
 */
const LAYERS = [
  ['crypto', '^src/crypto/'],
  ['kms', '^src/kms/'],
  ['store', '^src/store/'],
  ['scope', '^src/scope\\.ts$'],
  ['keys', '^src/keys/'],
  ['drizzle', '^src/drizzle/'],
  ['blind', '^src/blind/'],
  ['migrate', '^src/migrate/'],
  ['cli', '^src/cli/'],
];

/**
 * One rule per layer: nothing in it imports a layer above it (the top layer, cli, has none; the rule
 * testing-is-a-leaf covers src/testing/).
 */
const layerRules = LAYERS.slice(0, -1).map(([name, path], i) => {
  const above = LAYERS.slice(i + 1).map(([, p]) => p);
  return {
    name: `layer-${name}`,
    comment: `${name} imports only the layers below it: ${
      LAYERS.slice(0, i)
        .map(([n]) => n)
        .join(', ') || 'none'
    } (and src/errors.ts)`,
    severity: 'error',
    from: { path },
    to: { path: above },
  };
});

/** Each cloud SDK: its own KEK module(s) and its own local test server, nothing else. */
const SDKS = [
  {
    name: 'aws',
    packages: '^(node_modules/)?@aws-sdk/',
    allowed: ['^src/kms/aws/', '^src/testing/aws/'],
  },
  {
    name: 'gcp',
    packages: '^(node_modules/)?(@google-cloud/|google-gax(/|$)|@grpc/)',
    allowed: ['^src/kms/gcp/', '^src/testing/gcp/'],
  },
  {
    name: 'azure',
    packages: '^(node_modules/)?@azure/',
    allowed: ['^src/kms/azure/', '^src/testing/azure/'],
  },
];

const sdkRules = SDKS.map(({ name, packages, allowed }) => ({
  name: `sdk-${name}`,
  comment: `the ${name} SDK packages are imported only by ${allowed.join(' and ')}`,
  severity: 'error',
  from: { path: '^src/', pathNot: allowed },
  to: { path: packages },
}));

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'no import cycle that exists at run time (type-only edges are erased)',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true, viaOnly: { dependencyTypesNot: ['type-only'] } },
    },
    {
      // Type-only cycles are erased by the compiler (`import type`, verbatimModuleSyntax), so they
      // cost nothing at run time; they still tie two files together. None is known today: the
      // lifecycle, heartbeat and onboarding modules take a `KeyringContext` declared below
      // `keys/keyring.ts`, and the column state lives in `drizzle/column-state.ts`.
      name: 'no-circular-type-only',
      comment: 'an import cycle through a type-only import',
      severity: 'warn',
      from: { path: '^src/' },
      to: { circular: true, via: { dependencyTypes: ['type-only'] } },
    },
    ...layerRules,
    {
      name: 'errors-is-a-leaf',
      comment: 'src/errors.ts, shared by every layer, imports nothing of src/',
      severity: 'error',
      from: { path: '^src/errors\\.ts$' },
      to: { path: '^src/' },
    },
    {
      name: 'testing-is-a-leaf',
      comment: 'the local servers may use every layer below the CLI; only src/testing/ imports them',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/testing/' },
      to: { path: '^src/testing/' },
    },
    {
      name: 'testing-not-cli',
      comment: 'the local servers do not import the CLI',
      severity: 'error',
      from: { path: '^src/testing/' },
      to: { path: '^src/cli/' },
    },
    {
      name: 'entry-files-not-imported',
      comment: 'the package entry points (src/index.ts, src/schema.ts) are imported by nothing in src/',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^src/(index|schema)\\.ts$' },
    },
    {
      name: 'drizzle-orm-where-needed',
      comment:
        'drizzle-orm is imported only by store, keys, drizzle, blind, migrate, cli and the schema entry; ' +
        'never by crypto/, kms/, the tenant scope or the test servers',
      severity: 'error',
      from: {
        path: '^src/',
        pathNot: ['^src/(store|keys|drizzle|blind|migrate|cli)/', '^src/schema\\.ts$'],
      },
      to: { path: '^(node_modules/)?drizzle-orm(/|$)' },
    },
    ...sdkRules,
    {
      name: 'opentelemetry-in-telemetry',
      comment: '@opentelemetry/api is an optional peer, loaded by src/keys/telemetry.ts alone',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/keys/telemetry\\.ts$' },
      to: { path: '^(node_modules/)?@opentelemetry/' },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'every import of src/ resolves (a typo would otherwise escape every rule above)',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    // Type-only imports count: a layer that names another's types depends on it.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    // Resolve packages the way Node's ESM loader does (the library is ESM first).
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
    reporterOptions: { text: { highlightFocused: true } },
  },
};
