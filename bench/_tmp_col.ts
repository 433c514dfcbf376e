import { createCipheriv, createDecipheriv, createSecretKey, randomBytes, randomUUID } from 'node:crypto';
import { integer, pgTable } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import { deriveFieldKey, open, seal } from '../src/crypto/aead.ts';
import { uuidToBytes } from '../src/crypto/envelope.ts';
import { type BuildContext, inBuildContext, type QueryContext } from '../src/drizzle/columns.ts';
import { scopeStorage } from '../src/scope.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { createKeyring, encrypted, localKek } from '../src/index.ts';
const TENANT='bench-tenant';
const objKey = createSecretKey(randomBytes(32));
const dek = randomBytes(32); const dekId = randomUUID();
const fk = deriveFieldKey(dek, uuidToBytes(dekId), TENANT, 'public.patients.name');
const patients = pgTable('patients', { id: integer('id'), name: encrypted.text('name') });
const keyring = createKeyring({ db: drizzle.mock(), platformKek: localKek({ key: randomBytes(32) }), cache: { maxAgeMs: 3_600_000 } });
keysOf(keyring).cache.put(dekId, uuidToBytes(dekId), TENANT, 1, Buffer.from(dek), true);
const build: BuildContext = { keyring, rowTenants: [], cursor: 0 };
const query: QueryContext = { keyring, tenantId: TENANT, scoped: true, pending: [], now: Date.now() };
const column = patients.name;
const text = randomBytes(256).toString('base64').slice(0,256); const pt = Buffer.from(text);
function bareEncrypt(pt: Buffer){ const iv=randomBytes(12); const c=createCipheriv('aes-256-gcm', objKey, iv); const ct=c.update(pt); c.final(); return Buffer.concat([iv,ct,c.getAuthTag()]); }
function bareDecrypt(msg: Buffer){ const n=msg.length; const d=createDecipheriv('aes-256-gcm', objKey, msg.subarray(0,12), {authTagLength:16}); d.setAuthTag(msg.subarray(n-16)); const p=d.update(msg.subarray(12,n-16)); d.final(); return p; }
const msg = bareEncrypt(pt); const env = seal(fk, pt);
const colEnv = inBuildContext(build, () => scopeStorage.run({ tenantId: TENANT }, () => column.mapToDriverValue(text))) as Buffer;
let sink: unknown;
const fns: Record<string, (n:number) => void> = {
  bare: (n) => { for (let i=0;i<n;i++) sink=bareDecrypt(msg); },
  bareStr: (n) => { for (let i=0;i<n;i++) sink=bareDecrypt(msg).toString('utf8'); },
  open: (n) => { for (let i=0;i<n;i++) sink=open(fk, env); },
  column: (n) => scopeStorage.run(query, () => { for (let i=0;i<n;i++) sink=column.mapFromDriverValue(colEnv); }),
};
const best: Record<string, number> = {};
for (let r=0;r<60;r++) for (const [k,f] of Object.entries(fns)) { const N=5000; const s=process.threadCpuUsage(); f(N); const e=process.threadCpuUsage(s); best[k]=Math.min(best[k]??1e9, (e.user+e.system)*1000/N); }
console.log(Object.fromEntries(Object.entries(best).map(([k,v])=>[k, Math.round(v), ])), 'open/bare', (best.open/best.bare).toFixed(3), 'col/bare', (best.column/best.bare).toFixed(3));
