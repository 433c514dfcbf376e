/** Cloud KMS resource names: the CryptoKey name a KEK is configured with, and its versions. */
import { ByokConfigError } from '../../errors.ts';

/** The parts of a CryptoKey resource name. */
export interface GcpKeyNameParts {
  readonly projectId: string;
  readonly location: string;
  readonly keyRing: string;
  readonly cryptoKey: string;
}

const KEY_NAME_FORMAT = 'projects/<project>/locations/<location>/keyRings/<keyRing>/cryptoKeys/<cryptoKey>';
/** Project id (6-30 chars; optionally domain-scoped `example.com:my-project`) or project number. */
const PROJECT_RE = /^(?:(?:[a-z0-9-]+\.)+[a-z]{2,}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[1-9]\d{0,18}$/;
const LOCATION_RE = /^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;
const RESOURCE_ID_RE = /^[a-zA-Z0-9_-]{1,63}$/;

/**
 * Parses and validates a CryptoKey resource name; throws `ByokConfigError` naming the malformed part
 * (a segment keyword, the project, the location, the key ring or the key id), and refuses a
 * CryptoKeyVersion name.
 */
export function parseGcpKeyName(keyName: unknown): GcpKeyNameParts {
  if (typeof keyName !== 'string' || keyName.trim() === '') {
    throw new ByokConfigError(`gcpKms: keyName is required (${KEY_NAME_FORMAT})`);
  }
  const bad = (what: string) => new ByokConfigError(`gcpKms: invalid keyName "${keyName}": ${what}`);
  if (keyName !== keyName.trim()) throw bad('it has leading or trailing white space');
  const parts = keyName.split('/');
  if (parts.length >= 10 && parts[8] === 'cryptoKeyVersions') {
    throw bad(
      'it names a CryptoKeyVersion; give the CryptoKey name (drop "/cryptoKeyVersions/<n>"): Encrypt uses ' +
        'the primary version and Decrypt finds the version in the ciphertext, so key rotation keeps working',
    );
  }
  const keywords = ['projects', 'locations', 'keyRings', 'cryptoKeys'] as const;
  for (let i = 0; i < keywords.length; i++) {
    const at = parts[i * 2];
    if (at !== keywords[i]) {
      throw bad(
        at === undefined
          ? `it ends before the "${keywords[i]}" segment; expected ${KEY_NAME_FORMAT}`
          : `segment ${i * 2 + 1} must be "${keywords[i]}" (got "${at}"); expected ${KEY_NAME_FORMAT}`,
      );
    }
  }
  if (parts.length !== 8) {
    throw bad(`it has ${parts.length - 8} segment(s) after the key id; expected ${KEY_NAME_FORMAT}`);
  }
  const [, projectId, , location, , keyRing, , cryptoKey] = parts as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  if (!PROJECT_RE.test(projectId)) {
    throw bad(
      `project "${projectId}" is malformed: a project id is 6-30 lowercase letters, digits and hyphens, ` +
        'starting with a letter and not ending with a hyphen (or a project number)',
    );
  }
  if (location.length > 63 || !LOCATION_RE.test(location)) {
    throw bad(`location "${location}" is malformed (e.g. global, us, europe-west1)`);
  }
  if (!RESOURCE_ID_RE.test(keyRing)) {
    throw bad(`key ring id "${keyRing}" is malformed: 1-63 letters, digits, underscores and hyphens`);
  }
  if (!RESOURCE_ID_RE.test(cryptoKey)) {
    throw bad(`crypto key id "${cryptoKey}" is malformed: 1-63 letters, digits, underscores and hyphens`);
  }
  return { projectId, location, keyRing, cryptoKey };
}

/** Whether `versionName` is a CryptoKeyVersion of the CryptoKey `keyName`. */
export function isVersionOf(keyName: string, versionName: string): boolean {
  return (
    typeof versionName === 'string' &&
    versionName.startsWith(`${keyName}/cryptoKeyVersions/`) &&
    /^[1-9]\d{0,18}$/.test(versionName.slice(keyName.length + '/cryptoKeyVersions/'.length))
  );
}
