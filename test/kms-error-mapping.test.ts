/**
 * Error mapping for answers that are not KMS answers (HTML or plain-text bodies from a proxy, a load
 * balancer or a wrong endpoint; JSON without an error name; missing fields; any status code), with
 * the real SDK clients against servers that answer such bodies. Every outcome is one of the
 * documented typed errors, never the base `ByokError`, and names the KMS and the operation.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createH2Server, type Http2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ByokConfigError,
  ByokError,
  KmsCredentialsError,
  KmsIntegrityError,
  KmsThrottledError,
  KmsUnavailableError,
} from '../src/errors.ts';
import { awsKms } from '../src/kms/aws/index.ts';
import { gcpKms } from '../src/kms/gcp/index.ts';
import { startGcpKmsServer } from '../src/testing/gcp/index.ts';

interface Answer {
  status: number;
  contentType: string;
  body: string;
}

let answer: Answer = { status: 200, contentType: 'text/html', body: '' };
let http: Server;
let h2: Http2Server;
const listen = (s: Server | Http2Server) =>
  new Promise<number>((resolve) =>
    s.listen(0, '127.0.0.1', () => resolve((s.address() as AddressInfo).port)),
  );
let httpPort: number;
let h2Port: number;

beforeAll(async () => {
  http = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(answer.status, { 'content-type': answer.contentType });
      res.end(answer.body);
    });
  });
  h2 = createH2Server();
  h2.on('stream', (stream) => {
    stream.resume();
    stream.on('end', () => {
      stream.respond({ ':status': answer.status, 'content-type': answer.contentType });
      stream.end(answer.body);
    });
  });
  httpPort = await listen(http);
  h2Port = await listen(h2);
});
afterAll(async () => {
  http.closeAllConnections();
  await new Promise((r) => http.close(r));
  await new Promise((r) => h2.close(r));
});

const KEY = 'arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const aws = () =>
  awsKms({
    keyArn: KEY,
    auth: {
      type: 'access-keys',
      accessKeyId: 'AKIAIOSFODNN7EXAMPLE',
      secretAccessKey: 'not-a-real-secret-key',
    },
    endpoint: `http://127.0.0.1:${httpPort}`,
    timeoutMs: 2000,
    maxAttempts: 1,
  });
const context = { tenantId: 'acme', dekId: randomUUID() };
const dek = new Uint8Array(32).fill(7);
type Op = 'Encrypt' | 'Decrypt' | 'DescribeKey';
const awsCall = (op: Op) => {
  const k = aws();
  const p =
    op === 'Encrypt'
      ? k.wrap(dek, context)
      : op === 'Decrypt'
        ? k.unwrap(new Uint8Array(64).fill(1), context)
        : k.describe();
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
};

/** The documented class for a non-KMS answer with this HTTP status. */
function expectedFor(status: number): new (...a: never[]) => ByokError {
  if (status >= 200 && status < 300) return KmsIntegrityError;
  if (status === 401 || status === 403) return KmsCredentialsError;
  if (status === 429) return KmsThrottledError;
  if ((status >= 300 && status < 400) || status === 404 || status === 405) return ByokConfigError;
  return KmsUnavailableError;
}

const bodies = fc.oneof(
  fc.constant({ contentType: 'text/html', body: '<html><body><h1>403 Forbidden</h1></body></html>' }),
  fc.constant({ contentType: 'text/html', body: '<!DOCTYPE html><title>Bad Gateway</title>' }),
  fc.constant({
    contentType: 'text/plain',
    body: 'upstream connect error or disconnect/reset before headers',
  }),
  fc.constant({ contentType: 'application/json', body: '{"message":"no error name here"}' }),
  fc.string({ maxLength: 40 }).map((body) => ({ contentType: 'text/plain', body: `x${body}` })),
);
const statuses = fc.oneof(
  fc.constantFrom(200, 301, 302, 400, 401, 403, 404, 405, 408, 409, 413, 429, 500, 502, 503, 504),
  fc.integer({ min: 200, max: 599 }).filter((s) => s !== 204 && s !== 304 && !(s >= 100 && s < 200)),
);

describe('AWS KMS: answers that are not KMS answers', () => {
  it('HTML 403 and 503 bodies: KmsCredentialsError and KmsUnavailableError naming AWS KMS and the operation', async () => {
    answer = { status: 403, contentType: 'text/html', body: '<html>Forbidden</html>' };
    const denied = await awsCall('Decrypt');
    expect(denied).toBeInstanceOf(KmsCredentialsError);
    expect((denied as Error).message).toMatch(new RegExp(`^AWS KMS Decrypt with ${KEY} failed: HTTP 403`));
    answer = { status: 503, contentType: 'text/html', body: '<html>Service Unavailable</html>' };
    const down = await awsCall('Encrypt');
    expect(down).toBeInstanceOf(KmsUnavailableError);
    expect((down as Error).message).toMatch(/^AWS KMS Encrypt with .* failed: KMS unavailable \(HTTP 503/);
  });

  it('any status with any non-KMS body, any operation: the documented typed error, never the base class, no secret in it', async () => {
    await fc.assert(
      fc.asyncProperty(
        statuses,
        bodies,
        fc.constantFrom<Op>('Encrypt', 'Decrypt', 'DescribeKey'),
        async (status, b, op) => {
          answer = { status, ...b };
          const e = await awsCall(op);
          if (status >= 200 && status < 300 && b.body.startsWith('{')) {
            // a 2xx JSON object without the fields the operation needs
            expect(e).toBeInstanceOf(KmsIntegrityError);
          } else {
            expect(e).toBeInstanceOf(expectedFor(status));
          }
          expect((e as Error).constructor).not.toBe(ByokError);
          expect((e as Error).message.startsWith(`AWS KMS ${op} with ${KEY}`)).toBe(true);
          expect(JSON.stringify({ m: (e as Error).message, c: String((e as Error).cause) })).not.toContain(
            'not-a-real-secret-key',
          );
        },
      ),
      { numRuns: 60 },
    );
  });

  it('answers missing fields: DescribeKey without KeyUsage / KeyState / Arn, Encrypt without KeyId, Decrypt naming another key', async () => {
    const meta = {
      KeyId: '1234abcd-12ab-34cd-56ef-1234567890ab',
      Arn: KEY,
      KeyState: 'Enabled',
      KeyUsage: 'ENCRYPT_DECRYPT',
      KeySpec: 'SYMMETRIC_DEFAULT',
    };
    const json = (o: unknown) => ({
      status: 200,
      contentType: 'application/x-amz-json-1.1',
      body: JSON.stringify(o),
    });
    for (const missing of ['KeyUsage', 'KeyState', 'Arn', 'KeySpec'] as const) {
      const { [missing]: _, ...rest } = meta;
      answer = json({ KeyMetadata: rest });
      const e = await awsCall('DescribeKey');
      expect(e).toBeInstanceOf(KmsIntegrityError);
      expect((e as Error).message).toBe(
        missing === 'Arn'
          ? `AWS KMS DescribeKey with ${KEY}: the answer names no key (KeyId missing)`
          : `AWS KMS DescribeKey with ${KEY}: the answer has no KeyMetadata.${missing}`,
      );
    }
    answer = json({ CiphertextBlob: Buffer.from('abc').toString('base64') });
    expect(await awsCall('Encrypt')).toBeInstanceOf(KmsIntegrityError);
    answer = json({
      CiphertextBlob: Buffer.from('abc').toString('base64'),
      KeyId: KEY.replace('1234abcd', 'ffffffff'),
    });
    expect(((await awsCall('Encrypt')) as Error).message).toMatch(/cannot name/);
    answer = json({
      Plaintext: Buffer.alloc(32, 1).toString('base64'),
      KeyId: KEY.replace('1234abcd', 'ffffffff'),
    });
    expect(await awsCall('Decrypt')).toBeInstanceOf(KmsIntegrityError);
    answer = json({ Plaintext: Buffer.alloc(16, 1).toString('base64'), KeyId: KEY });
    expect(await awsCall('Decrypt')).toBeInstanceOf(KmsIntegrityError);
  });
});

describe('Cloud KMS: answers that are not gRPC answers from Cloud KMS', () => {
  it('an HTTP/2 server answering HTML: typed by HTTP status (a 403 is never taken for a revocation)', async () => {
    // the local server only lends a service-account key to sign tokens with
    const local = await startGcpKmsServer();
    try {
      const cases: [number, new (...a: never[]) => ByokError][] = [
        [403, KmsCredentialsError],
        [401, KmsCredentialsError],
        [404, ByokConfigError],
        [429, KmsThrottledError],
        [502, KmsUnavailableError],
        [503, KmsUnavailableError],
        [500, KmsUnavailableError],
      ];
      for (const [status, cls] of cases) {
        answer = { status, contentType: 'text/html', body: '<html>proxy</html>' };
        const k = gcpKms({
          keyName: 'projects/my-project/locations/global/keyRings/r/cryptoKeys/k',
          credentials: { type: 'service-account', key: { ...local.admin } },
          apiEndpoint: '127.0.0.1',
          port: h2Port,
          insecure: true,
          timeoutMs: 2000,
          retries: 0,
        });
        for (const call of [
          () => k.describe(),
          () => k.wrap(dek, context),
          () => k.unwrap(new Uint8Array(40), context),
        ]) {
          const e = await call().then(
            () => undefined,
            (x: unknown) => x,
          );
          expect(e, `HTTP ${status}`).toBeInstanceOf(cls);
          expect((e as Error).message).toMatch(
            /^Cloud KMS (GetCryptoKey|Encrypt|Decrypt) with projects\/my-project\//,
          );
        }
        await k.close();
      }
    } finally {
      await local.close();
    }
  });
});
