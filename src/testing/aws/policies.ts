/**
 * Key policies and role trust policies of the local AWS server, as IAM documents: parsing, the
 * supported subset (Allow/Deny, principals, action wildcards, string conditions) and a reduced IAM
 * evaluation (an Allow matches and no Deny does).
 */
import { WireError } from './protocol.ts';

/** An IAM policy document (key policy or role trust policy), as AWS writes them. */
export interface PolicyDocument {
  Version?: string;
  Id?: string;
  Statement: PolicyStatement | PolicyStatement[];
}

/**
 * One policy statement. Supported: `Effect` Allow/Deny (Deny wins); `Principal` `"*"` or
 * `{ AWS: ... }` (account id, `arn:aws:iam::<account>:root`, user ARN, role ARN matching all its
 * sessions, assumed-role session ARN) or `{ Federated: <oidc-provider ARN> }`; `Action` with `*`
 * and `?` wildcards; `Condition` operators `StringEquals`, `StringNotEquals`, `StringLike`,
 * `StringNotLike` over the keys `kms:EncryptionContext:<key>`, `kms:CallerAccount`,
 * `aws:PrincipalArn`, `aws:PrincipalAccount`, `sts:ExternalId`, `sts:RoleSessionName`,
 * `<issuer>:aud`, `<issuer>:sub`. `Resource` is ignored (a key policy applies to its key).
 */
export interface PolicyStatement {
  Sid?: string;
  Effect: 'Allow' | 'Deny';
  Principal: '*' | { AWS?: string | string[]; Federated?: string | string[] };
  Action: string | string[];
  Resource?: string | string[];
  Condition?: Record<string, Record<string, string | string[]>>;
}

/** Who signed a request: an IAM user, or a session of a role. */
export interface Principal {
  readonly kind: 'user' | 'assumed-role';
  /** User ARN or `arn:aws:sts::<acct>:assumed-role/<role>/<session>`. */
  readonly arn: string;
  readonly accountId: string;
  /** Role ARN, for sessions. */
  readonly roleArn?: string;
  /** False when the principal has no identity-based policy allowing KMS (see `iamAllowsKms`). */
  readonly iamAllowsKms?: boolean;
}

/** An authenticated call: its principal, and its region (that of its SigV4 credential scope). */
export interface Caller {
  readonly principal: Principal;
  readonly region: string;
}

type ConditionOperator = 'StringEquals' | 'StringNotEquals' | 'StringLike' | 'StringNotLike';
const CONDITION_OPERATORS = new Set<string>([
  'StringEquals',
  'StringNotEquals',
  'StringLike',
  'StringNotLike',
]);

interface NormalizedStatement {
  readonly effect: 'Allow' | 'Deny';
  readonly anyPrincipal: boolean;
  readonly aws: readonly string[];
  readonly federated: readonly string[];
  readonly actions: readonly RegExp[];
  readonly conditions: readonly { op: ConditionOperator; key: string; values: readonly string[] }[];
}

export type NormalizedPolicy = readonly NormalizedStatement[];

/** Who is asking, for policy evaluation. */
export interface PolicySubject {
  readonly principal?: Principal;
  /** Federated provider ARN (web identity). */
  readonly federated?: string;
}

export function asList(value: string | readonly string[] | undefined): string[] {
  if (value === undefined) return [];
  return typeof value === 'string' ? [value] : [...value];
}

function globToRegExp(pattern: string, caseInsensitive: boolean): RegExp {
  const body = pattern
    .split('')
    .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[\\^$.|+()[\]{}]/g, '\\$&')))
    .join('');
  return new RegExp(`^${body}$`, caseInsensitive ? 'is' : 's');
}

/** Condition keys are case-insensitive, except the EncryptionContext key after the prefix. */
function normalizeConditionKey(key: string): string {
  const lower = key.toLowerCase();
  const prefix = 'kms:encryptioncontext:';
  return lower.startsWith(prefix) ? prefix + key.slice(prefix.length) : lower;
}

/** Parses and checks a policy document; throws `Error` naming what is not supported. */
export function normalizePolicy(input: PolicyDocument | string): NormalizedPolicy {
  let doc: unknown = input;
  if (typeof input === 'string') {
    try {
      doc = JSON.parse(input);
    } catch {
      throw new Error('policy is not valid JSON');
    }
  }
  if (typeof doc !== 'object' || doc === null || !('Statement' in doc)) {
    throw new Error('policy has no Statement');
  }
  const raw = (doc as PolicyDocument).Statement;
  const statements = Array.isArray(raw) ? raw : [raw];
  return statements.map((s, i): NormalizedStatement => {
    if (typeof s !== 'object' || s === null) throw new Error(`Statement[${i}] is not an object`);
    if (s.Effect !== 'Allow' && s.Effect !== 'Deny')
      throw new Error(`Statement[${i}].Effect must be Allow or Deny`);
    let anyPrincipal = false;
    let aws: string[] = [];
    let federated: string[] = [];
    if (s.Principal === '*') anyPrincipal = true;
    else if (typeof s.Principal === 'object' && s.Principal !== null) {
      for (const k of Object.keys(s.Principal)) {
        if (k !== 'AWS' && k !== 'Federated')
          throw new Error(`Statement[${i}].Principal.${k} is not supported`);
      }
      aws = asList(s.Principal.AWS);
      federated = asList(s.Principal.Federated);
      if (aws.includes('*')) anyPrincipal = true;
    } else throw new Error(`Statement[${i}].Principal is missing`);
    const actions = asList(s.Action);
    if (actions.length === 0) throw new Error(`Statement[${i}].Action is missing`);
    const conditions: { op: ConditionOperator; key: string; values: string[] }[] = [];
    for (const [op, entries] of Object.entries(s.Condition ?? {})) {
      if (!CONDITION_OPERATORS.has(op))
        throw new Error(`Statement[${i}]: condition operator ${op} is not supported`);
      for (const [key, values] of Object.entries(entries)) {
        conditions.push({
          op: op as ConditionOperator,
          key: normalizeConditionKey(key),
          values: asList(values),
        });
      }
    }
    return {
      effect: s.Effect,
      anyPrincipal,
      aws,
      federated,
      actions: actions.map((a) => globToRegExp(a, true)),
      conditions,
    };
  });
}

function principalMatches(pattern: string, p: Principal): boolean {
  if (pattern === '*') return true;
  // An account (or its root) in a key policy delegates to the account's IAM policies: it covers the
  // account's principals whose identity-based policies allow KMS (all, unless `iamAllowsKms: false`).
  if (/^\d{12}$/.test(pattern)) return p.accountId === pattern && p.iamAllowsKms !== false;
  const root = /^arn:aws:iam::(\d{12}):root$/.exec(pattern);
  if (root) return p.accountId === root[1] && p.iamAllowsKms !== false;
  if (pattern === p.arn) return true;
  // A role ARN (possibly with a path) matches every session of the role.
  return p.roleArn !== undefined && pattern === p.roleArn;
}

function statementMatches(
  s: NormalizedStatement,
  subject: PolicySubject,
  action: string,
  context: ReadonlyMap<string, string>,
): boolean {
  const who =
    (s.anyPrincipal && subject.principal !== undefined) ||
    (subject.principal !== undefined && s.aws.some((a) => principalMatches(a, subject.principal!))) ||
    (subject.federated !== undefined && s.federated.includes(subject.federated));
  if (!who) return false;
  if (!s.actions.some((re) => re.test(action))) return false;
  return s.conditions.every(({ op, key, values }) => {
    const actual = context.get(key);
    switch (op) {
      case 'StringEquals':
        return actual !== undefined && values.includes(actual);
      case 'StringNotEquals':
        return actual === undefined || !values.includes(actual);
      case 'StringLike':
        return actual !== undefined && values.some((v) => globToRegExp(v, false).test(actual));
      case 'StringNotLike':
        return actual === undefined || !values.some((v) => globToRegExp(v, false).test(actual));
    }
    return false;
  });
}

/** IAM evaluation, reduced: allowed when an Allow statement matches and no Deny does. */
export function isAllowed(
  policy: NormalizedPolicy,
  subject: PolicySubject,
  action: string,
  context: ReadonlyMap<string, string>,
): boolean {
  let allowed = false;
  for (const s of policy) {
    if (!statementMatches(s, subject, action, context)) continue;
    if (s.effect === 'Deny') return false;
    allowed = true;
  }
  return allowed;
}

export function defaultKeyPolicyText(accountId: string): string {
  return JSON.stringify(defaultKeyPolicy(accountId));
}

export function defaultKeyPolicy(accountId: string): PolicyDocument {
  return {
    Version: '2012-10-17',
    Id: 'key-default-1',
    Statement: [
      {
        Sid: 'Enable IAM User Permissions',
        Effect: 'Allow',
        Principal: { AWS: `arn:aws:iam::${accountId}:root` },
        Action: 'kms:*',
        Resource: '*',
      },
    ],
  };
}

/** Throws `AccessDeniedException` unless the key's policy allows the action to the principal. */
export function authorizeKey(
  key: { readonly arn: string; readonly policy: NormalizedPolicy },
  principal: Principal,
  action: string,
  ec?: Record<string, string>,
): void {
  const context = new Map<string, string>([
    ['aws:principalarn', principal.roleArn ?? principal.arn],
    ['aws:principalaccount', principal.accountId],
    ['kms:calleraccount', principal.accountId],
  ]);
  for (const [k, v] of Object.entries(ec ?? {})) context.set(`kms:encryptioncontext:${k}`, v);
  if (!isAllowed(key.policy, { principal }, action, context)) {
    throw new WireError(
      'AccessDeniedException',
      `User: ${principal.arn} is not authorized to perform: ${action} on resource: ${key.arn} because no resource-based policy allows the ${action} action`,
    );
  }
}
