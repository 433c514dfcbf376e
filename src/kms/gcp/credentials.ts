/** Cloud KMS credentials: the credential types, the service-account key check, and their description. */
import { createPrivateKey } from 'node:crypto';
import { ByokConfigError } from '../../errors.ts';

/** The fields of a service-account key file the KEK uses (the file has more; they are kept). */
export interface GcpServiceAccountKeyJson {
  readonly type?: string;
  readonly client_email: string;
  /** PEM (PKCS#8), as in the key file. */
  readonly private_key: string;
  readonly private_key_id?: string;
  readonly project_id?: string;
  readonly [field: string]: unknown;
}

/** A service-account key (the JSON key file, as an object or as its text). */
export interface GcpServiceAccountCredentials {
  readonly type: 'service-account';
  readonly key: GcpServiceAccountKeyJson | string;
}

/**
 * Application default credentials: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, or the
 * attached service account on Google Cloud (GCE / GKE / Cloud Run metadata server).
 */
export interface GcpDefaultCredentials {
  readonly type: 'default';
}

export type GcpCredentials = GcpServiceAccountCredentials | GcpDefaultCredentials;

/** A checked service-account key file and its account. */
export interface ParsedServiceAccount {
  readonly json: GcpServiceAccountKeyJson;
  readonly clientEmail: string;
}

/** Checks a service-account key file (object or JSON text); the messages never quote the key. */
export function parseServiceAccountKey(raw: unknown): ParsedServiceAccount {
  const what = 'gcpKms: credentials.key must be a service-account key file (object or JSON text)';
  let json: unknown = raw;
  if (typeof raw === 'string') {
    try {
      json = JSON.parse(raw);
    } catch {
      // The parser's message may quote the text: it is not passed on.
      throw new ByokConfigError(`${what}; the text is not valid JSON`);
    }
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ByokConfigError(`${what}; got ${json === null ? 'null' : typeof json}`);
  }
  const o = json as Record<string, unknown>;
  if (o.type !== undefined && o.type !== 'service_account') {
    throw new ByokConfigError(
      `${what}; its type is "${String(o.type)}", not "service_account" ` +
        '(use { type: "default" } for other application default credentials)',
    );
  }
  if (typeof o.client_email !== 'string' || !/^[^@\s]+@[^@\s]+$/.test(o.client_email)) {
    throw new ByokConfigError(`${what}; client_email is missing or malformed`);
  }
  if (typeof o.private_key !== 'string' || !o.private_key.includes('PRIVATE KEY-----')) {
    throw new ByokConfigError(`${what}; private_key is missing or not a PEM private key (${o.client_email})`);
  }
  try {
    createPrivateKey(o.private_key);
  } catch {
    throw new ByokConfigError(
      `${what}; private_key cannot be parsed as a PEM private key (${o.client_email})`,
    );
  }
  if (o.private_key_id !== undefined && typeof o.private_key_id !== 'string') {
    throw new ByokConfigError(`${what}; private_key_id must be a string (${o.client_email})`);
  }
  return { json: Object.freeze({ ...o }) as GcpServiceAccountKeyJson, clientEmail: o.client_email };
}

/** The credentials in words, for messages: `service account <email>` or application default credentials. */
export function describeGcpCredentials(serviceAccount: ParsedServiceAccount | undefined): string {
  return serviceAccount === undefined
    ? 'application default credentials'
    : `service account ${serviceAccount.clientEmail}`;
}
