/**
 * The KMS endpoint of the local AWS server (JSON 1.1, `X-Amz-Target: TrentService.<Op>`): one call
 * is parsed, authenticated, counted, faulted, then dispatched to its operation.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { parseBlob } from './ciphertext.ts';
import type { AwsServerState } from './context.ts';
import {
  cancelKeyDeletion,
  createAlias,
  createKey,
  deleteAlias,
  describeKey,
  enableOrDisableKey,
  getKeyPolicy,
  listAliases,
  putKeyPolicy,
  replicateKey,
  scheduleKeyDeletion,
  updateAlias,
} from './kms-admin.ts';
import { decrypt, encrypt, generateDataKey, reEncrypt } from './kms-crypto.ts';
import type { KeyStore } from './keys.ts';
import type { Caller, Principal } from './policies.ts';
import { type Json, PARTITION, parseJsonBody, sendJson, WireError } from './protocol.ts';
import { verifySigV4 } from './sigv4.ts';

export async function handleKms(
  state: AwsServerState,
  req: IncomingMessage,
  res: ServerResponse,
  operation: string,
  body: Buffer,
): Promise<void> {
  const { keys, iam, faults, calls } = state;
  const rec = calls.start('kms', operation);
  let counted = false;
  try {
    const input = parseJsonBody(body);
    const { principal, region } = verifySigV4(req, body, 'kms', iam.credentials, state.maxSkewMs);
    rec.region = region;
    rec.principal = principal.arn;
    rec.roleArn = principal.roleArn;
    rec.keyArn = peekKeyArn(keys, input, region, principal);
    const ec = input.EncryptionContext ?? input.SourceEncryptionContext;
    if (typeof ec === 'object' && ec !== null) rec.encryptionContext = ec as Record<string, string>;
    calls.count(rec);
    counted = true;
    await faults.apply(operation, rec.keyArn);
    if (faults.closed) return;
    const out = kmsOperation(keys, operation, input, { principal, region });
    calls.finish(rec, 200);
    sendJson(res, 200, out);
  } catch (e) {
    const err =
      e instanceof WireError
        ? e
        : new WireError('KMSInternalException', `Internal error: ${(e as Error).message ?? String(e)}`, 500);
    if (!counted) calls.count(rec);
    calls.finish(rec, err.status, err.code);
    if (!faults.closed) sendJson(res, err.status, { __type: err.code, message: err.message });
  }
}

/** The key a KMS call targets, for counters and fault filters; never throws. */
function peekKeyArn(keys: KeyStore, input: Json, region: string, principal: Principal): string | undefined {
  try {
    const ref = [input.KeyId, input.TargetKeyId, input.SourceKeyId].find((v) => typeof v === 'string');
    if (typeof ref === 'string') return keys.lookupKey(region, principal.accountId, ref)?.arn;
    if (typeof input.CiphertextBlob === 'string') {
      const blob = parseBlob(Buffer.from(input.CiphertextBlob, 'base64'));
      if (blob) return `arn:${PARTITION}:kms:${region}:${blob.accountId}:key/${blob.keyId}`;
    }
  } catch {
    // counters only
  }
  return undefined;
}

function kmsOperation(keys: KeyStore, operation: string, input: Json, ctx: Caller): Json {
  switch (operation) {
    case 'Encrypt':
      return encrypt(keys, input, ctx);
    case 'Decrypt':
      return decrypt(keys, input, ctx);
    case 'ReEncrypt':
      return reEncrypt(keys, input, ctx);
    case 'GenerateDataKey':
      return generateDataKey(keys, input, ctx, true);
    case 'GenerateDataKeyWithoutPlaintext':
      return generateDataKey(keys, input, ctx, false);
    case 'DescribeKey':
      return describeKey(keys, input, ctx);
    case 'EnableKey':
    case 'DisableKey':
      return enableOrDisableKey(keys, input, ctx, operation === 'EnableKey');
    case 'ScheduleKeyDeletion':
      return scheduleKeyDeletion(keys, input, ctx);
    case 'CancelKeyDeletion':
      return cancelKeyDeletion(keys, input, ctx);
    case 'CreateKey':
      return createKey(keys, input, ctx);
    case 'CreateAlias':
      return createAlias(keys, input, ctx);
    case 'UpdateAlias':
      return updateAlias(keys, input, ctx);
    case 'DeleteAlias':
      return deleteAlias(keys, input, ctx);
    case 'ListAliases':
      return listAliases(keys, input, ctx);
    case 'ReplicateKey':
      return replicateKey(keys, input, ctx);
    case 'GetKeyPolicy':
      return getKeyPolicy(keys, input, ctx);
    case 'PutKeyPolicy':
      return putKeyPolicy(keys, input, ctx);
    default:
      throw new WireError(
        'UnknownOperationException',
        `Operation ${operation} is not supported by this local server`,
      );
  }
}
