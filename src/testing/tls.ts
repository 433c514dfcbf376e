/**
 * A self-signed TLS certificate for 127.0.0.1 and localhost, made at server start with the
 * `openssl` command, for the local servers that speak HTTPS (Key Vault always: its clients refuse
 * bearer tokens over plain HTTP; Vault on request). Clients trust it through the KEK's
 * `caCertificate` option, never through `NODE_TLS_REJECT_UNAUTHORIZED`.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SelfSignedCertificate {
  readonly certPem: string;
  readonly keyPem: string;
}

export function selfSignedCertificate(commonName = '127.0.0.1'): SelfSignedCertificate {
  const dir = mkdtempSync(join(tmpdir(), 'byok-tls-'));
  try {
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-keyout',
          key,
          '-out',
          cert,
          '-days',
          '2',
          '-subj',
          `/CN=${commonName}`,
          '-addext',
          `subjectAltName=IP:127.0.0.1,DNS:localhost`,
        ],
        { stdio: 'ignore' },
      );
    } catch (e) {
      throw new Error(
        `could not make a TLS certificate for a local test server with the openssl command (${(e as Error).message}); install openssl`,
      );
    }
    return { certPem: readFileSync(cert, 'utf8'), keyPem: readFileSync(key, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
