/**
 * Vault ACL policies for the local server: the HCL form Vault documents (`path "..." {
 * capabilities = [...] }`), parsed strictly enough to refuse what Vault refuses, and matched as
 * Vault does (exact paths, a trailing `*` prefix glob, `+` for one segment; `deny` wins; the most
 * specific match decides otherwise, approximated here by the longest pattern).
 */

export type VaultCapability = 'create' | 'read' | 'update' | 'patch' | 'delete' | 'list' | 'sudo' | 'deny';

const CAPABILITIES = new Set<VaultCapability>([
  'create',
  'read',
  'update',
  'patch',
  'delete',
  'list',
  'sudo',
  'deny',
]);

export interface VaultPolicyRule {
  readonly path: string;
  readonly capabilities: readonly VaultCapability[];
}

/** Parses policy HCL (or its JSON form `{ "path": { "<p>": { "capabilities": [...] } } }`). */
export function parsePolicy(text: string): VaultPolicyRule[] {
  const trimmed = text.trim();
  if (trimmed.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch {
      throw new Error('failed to parse policy: invalid JSON');
    }
    const paths = (parsed as { path?: Record<string, { capabilities?: unknown }> }).path ?? {};
    return Object.entries(paths).map(([path, v]) => ({ path, capabilities: caps(v?.capabilities) }));
  }
  const rules: VaultPolicyRule[] = [];
  const src = trimmed.replace(/#[^\n]*/g, '').replace(/\/\/[^\n]*/g, '');
  const re = /path\s+"([^"]+)"\s*\{([^}]*)\}/g;
  let consumed = '';
  for (let m = re.exec(src); m !== null; m = re.exec(src)) {
    const body = m[2]!;
    const c = /capabilities\s*=\s*\[([^\]]*)\]/.exec(body);
    if (c === null) throw new Error(`failed to parse policy: path "${m[1]}" has no capabilities`);
    const list = [...c[1]!.matchAll(/"([^"]*)"/g)].map((x) => x[1]);
    rules.push({ path: m[1]!, capabilities: caps(list) });
    consumed += m[0];
  }
  const rest = src.replace(re, '').trim();
  if (rest !== '') throw new Error('failed to parse policy: unexpected text outside path blocks');
  if (rules.length === 0 && consumed === '' && src !== '') throw new Error('failed to parse policy');
  return rules;
}

function caps(v: unknown): VaultCapability[] {
  if (!Array.isArray(v)) throw new Error('failed to parse policy: capabilities must be a list');
  for (const c of v) {
    if (!CAPABILITIES.has(c as VaultCapability)) {
      throw new Error(`failed to parse policy: invalid capability "${String(c)}"`);
    }
  }
  return v as VaultCapability[];
}

function matches(pattern: string, path: string): boolean {
  const glob = pattern.endsWith('*');
  const p = glob ? pattern.slice(0, -1) : pattern;
  const ps = p.split('/');
  const xs = path.split('/');
  if (!glob && ps.length !== xs.length) return false;
  if (glob && xs.length < ps.length) return false;
  for (let i = 0; i < ps.length; i++) {
    const seg = ps[i]!;
    const x = xs[i]!;
    if (seg === '+') continue;
    const last = i === ps.length - 1;
    if (glob && last ? !x.startsWith(seg) : seg !== x) return false;
  }
  return true;
}

/** The capabilities a set of policies grants on `path` (empty: nothing; `deny` removes all). */
export function capabilitiesOn(rules: readonly VaultPolicyRule[], path: string): Set<VaultCapability> {
  const hits = rules.filter((r) => matches(r.path, path));
  if (hits.some((r) => r.capabilities.includes('deny'))) return new Set();
  if (hits.length === 0) return new Set();
  const best = Math.max(
    ...hits.map((r) => r.path.replace(/\*$/, '').length + (r.path.endsWith('*') ? 0 : 1)),
  );
  const out = new Set<VaultCapability>();
  for (const r of hits) {
    if (r.path.replace(/\*$/, '').length + (r.path.endsWith('*') ? 0 : 1) === best) {
      for (const c of r.capabilities) out.add(c);
    }
  }
  return out;
}

/** The `default` policy every token gets: look itself up, renew and revoke itself. */
export const DEFAULT_POLICY = `
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/revoke-self" { capabilities = ["update"] }
`;
