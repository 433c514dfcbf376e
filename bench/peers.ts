/**
 * Third-party libraries measured next to drizzle-byok in the per-field section, with the same
 * payloads. Each factory checks a round trip before returning its tasks.
 */
import { randomBytes } from 'node:crypto';
import { decryptStringSync, encryptStringSync, generateKey, parseKeySync } from '@47ng/cloak';
import {
  AlgorithmSuiteIdentifier,
  buildClient,
  CommitmentPolicy,
  RawAesKeyringNode,
  RawAesWrappingSuiteIdentifier,
} from '@aws-crypto/client-node';
import { type MicroTask, sink } from './lib.ts';

export interface PeerTasks {
  /** Row label in the tables. */
  readonly label: string;
  readonly encrypt: MicroTask;
  readonly decrypt: MicroTask;
}

/**
 * @47ng/cloak (the engine of prisma-field-encryption): synchronous node:crypto AES-256-GCM on a
 * string, output `v1.aesgcm256.<fingerprint>.<iv b64>.<ciphertext b64>`. The key is parsed once
 * (a `ParsedCloakKey`), as an app would keep it. No AAD.
 */
export function cloakTasks(size: number, text: string): PeerTasks {
  const key = parseKeySync(generateKey());
  const sample = encryptStringSync(text, key);
  if (decryptStringSync(sample, key) !== text) throw new Error('cloak round trip failed');
  return {
    label: '@47ng/cloak `encryptStringSync` / `decryptStringSync`',
    encrypt: {
      id: `enc/cloak/${size}`,
      batch: batchFor(size),
      run(n) {
        for (let i = 0; i < n; i++) sink.value = encryptStringSync(text, key);
      },
    },
    decrypt: {
      id: `dec/cloak/${size}`,
      batch: batchFor(size),
      run(n) {
        for (let i = 0; i < n; i++) sink.value = decryptStringSync(sample, key);
      },
    },
  };
}

/**
 * AWS Encryption SDK for JavaScript with a raw AES-256 keyring (no KMS call): every message carries
 * its own data key (per-message HKDF, key commitment), so it is built for messages, not fields.
 * `encrypt`/`decrypt` are async; each sample awaits one operation.
 */
export async function awsEsdkTasks(size: number, plaintext: Buffer, signed: boolean): Promise<PeerTasks> {
  const { encrypt, decrypt } = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
  const keyring = new RawAesKeyringNode({
    keyName: 'bench-key',
    keyNamespace: 'drizzle-byok-bench',
    unencryptedMasterKey: randomBytes(32),
    wrappingSuite: RawAesWrappingSuiteIdentifier.AES256_GCM_IV12_TAG16_NO_PADDING,
  });
  const suiteId = signed
    ? AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY_ECDSA_P384
    : AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY;
  const context = { tenant: 'bench-tenant', column: 'public.patients.name' };
  const { result: sample } = await encrypt(keyring, plaintext, { suiteId, encryptionContext: context });
  const back = await decrypt(keyring, sample);
  if (!Buffer.from(back.plaintext).equals(plaintext)) throw new Error('AWS Encryption SDK round trip failed');
  const tag = signed ? 'signed' : 'unsigned';
  return {
    label: signed
      ? '@aws-crypto/client-node, raw AES keyring, default suite (ECDSA P-384 signed)'
      : '@aws-crypto/client-node, raw AES keyring, committing suite without signature',
    encrypt: {
      id: `enc/aws-${tag}/${size}`,
      batch: 1,
      async run(n) {
        for (let i = 0; i < n; i++)
          sink.value = (await encrypt(keyring, plaintext, { suiteId, encryptionContext: context })).result;
      },
    },
    decrypt: {
      id: `dec/aws-${tag}/${size}`,
      batch: 1,
      async run(n) {
        for (let i = 0; i < n; i++) sink.value = (await decrypt(keyring, sample)).plaintext;
      },
    },
  };
}

export function batchFor(size: number): number {
  return size >= 4096 ? 16 : 64;
}
