/**
 * Resource names of the local Cloud KMS server (`projects/<p>/locations/<l>/keyRings/<r>/
 * cryptoKeys/<k>/cryptoKeyVersions/<n>`): their syntax, and the CryptoKey a request names.
 */
import { type GcpKmsMethod, invalid, type Req, str } from './protocol.ts';

export const ID_RE = /^[a-zA-Z0-9_-]{1,63}$/;
export const PROJECT_RE = /^(?:[a-z0-9.-]+:)?[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$/;
export const LOCATION_RE = /^[a-z][a-z0-9-]{0,62}$/;
const LOCATION_NAME_RE = /^projects\/([^/]+)\/locations\/([^/]+)$/;
export const KEY_RING_NAME_RE = /^projects\/([^/]+)\/locations\/([^/]+)\/keyRings\/([^/]+)$/;
export const KEY_NAME_RE = /^(projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+)\/cryptoKeys\/([^/]+)$/;
export const VERSION_NAME_RE =
  /^(projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+\/cryptoKeys\/[^/]+)\/cryptoKeyVersions\/([^/]+)$/;

export function checkLocationName(name: string): { project: string; location: string } {
  const m = LOCATION_NAME_RE.exec(name);
  if (!m || !PROJECT_RE.test(m[1]!) || !LOCATION_RE.test(m[2]!)) {
    throw invalid(
      `Resource name [${name}] is not a valid location name (projects/{project}/locations/{location}).`,
    );
  }
  return { project: m[1]!, location: m[2]! };
}

export function checkKeyRingName(name: string): { project: string; location: string } {
  const m = KEY_RING_NAME_RE.exec(name);
  if (!m || !PROJECT_RE.test(m[1]!) || !LOCATION_RE.test(m[2]!) || !ID_RE.test(m[3]!)) {
    throw invalid(`Resource name [${name}] is not a valid KeyRing name.`);
  }
  return { project: m[1]!, location: m[2]! };
}

export function checkKeyName(name: string): { keyRing: string } {
  const m = KEY_NAME_RE.exec(name);
  if (!m || !ID_RE.test(m[2]!)) throw invalid(`Resource name [${name}] is not a valid CryptoKey name.`);
  checkKeyRingName(m[1]!);
  return { keyRing: m[1]! };
}

export function checkVersionName(name: string): { key: string; id: number } {
  const m = VERSION_NAME_RE.exec(name);
  if (!m || !/^[1-9]\d{0,8}$/.test(m[2]!)) {
    throw invalid(`Resource name [${name}] is not a valid CryptoKeyVersion name.`);
  }
  checkKeyName(m[1]!);
  return { key: m[1]!, id: Number(m[2]) };
}

/** The CryptoKey a name refers to (itself, or the key of a version), for counters and filters. */
function keyOfName(name: unknown): string | undefined {
  if (typeof name !== 'string') return undefined;
  const v = VERSION_NAME_RE.exec(name);
  if (v) return v[1];
  return KEY_NAME_RE.test(name) ? name : undefined;
}

export const projectOf = (name: string): string => name.split('/').slice(0, 2).join('/');

/** The CryptoKey a request names, for counters and fault filters. */
export function keyOfRequest(method: GcpKmsMethod, req: Req): string | undefined {
  switch (method) {
    case 'CreateCryptoKey':
      return keyOfName(`${str(req.parent)}/cryptoKeys/${str(req.cryptoKeyId)}`);
    case 'ListCryptoKeyVersions':
    case 'CreateCryptoKeyVersion':
      return keyOfName(req.parent);
    case 'UpdateCryptoKeyVersion':
      return keyOfName((req.cryptoKeyVersion as Req | null)?.name);
    default:
      return keyOfName(req.name);
  }
}
