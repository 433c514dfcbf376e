/**
 * The local AWS KMS server in a process of its own (not a section): a bench section measuring the
 * client side of KMS calls keeps the server's work off the client's event loop, as with a real KMS.
 * Driven over IPC (`fork`): see `startKmsProcess`.
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startAwsKmsServer } from '../src/testing/aws/index.ts';

type Request =
  | { id: number; op: 'setup' }
  | { id: number; op: 'latency'; ms: number; operations: string[] }
  | { id: number; op: 'clear' }
  | { id: number; op: 'reset' }
  | { id: number; op: 'total' }
  | { id: number; op: 'close' };

export interface KmsProcess {
  readonly endpoint: string;
  readonly keyArn: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  latency(ms: number, operations: string[]): Promise<void>;
  clear(): Promise<void>;
  /** Resets the call counters. */
  reset(): Promise<void>;
  /** Calls seen since the last reset. */
  total(): Promise<number>;
  close(): Promise<void>;
}

/** Starts the server process, with one platform user and one symmetric key. */
export async function startKmsProcess(): Promise<KmsProcess> {
  const child = fork(fileURLToPath(import.meta.url), [], {
    execArgv: ['--experimental-strip-types', '--no-warnings'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let next = 0;
  const waiting = new Map<number, (v: unknown) => void>();
  child.on('message', (m: { id: number; value: unknown }) => {
    waiting.get(m.id)?.(m.value);
    waiting.delete(m.id);
  });
  const call = <T>(req: Record<string, unknown>): Promise<T> =>
    new Promise<T>((resolve) => {
      const id = next++;
      waiting.set(id, resolve as (v: unknown) => void);
      child.send({ ...req, id });
    });
  const setup = await call<{
    endpoint: string;
    keyArn: string;
    accessKeyId: string;
    secretAccessKey: string;
  }>({ op: 'setup' });
  return {
    ...setup,
    latency: (ms, operations) => call({ op: 'latency', ms, operations }),
    clear: () => call({ op: 'clear' }),
    reset: () => call({ op: 'reset' }),
    total: () => call<number>({ op: 'total' }),
    close: async () => {
      await call({ op: 'close' });
      child.disconnect();
    },
  };
}

if (process.send !== undefined && process.argv[1] === fileURLToPath(import.meta.url)) {
  const aws = await startAwsKmsServer();
  process.on('message', async (m: Request) => {
    const reply = (value: unknown) => process.send!({ id: m.id, value });
    switch (m.op) {
      case 'setup': {
        const user = aws.addUser({ name: 'platform' });
        const key = aws.createKey({ description: 'platform key' });
        return reply({
          endpoint: aws.endpoint,
          keyArn: key.arn,
          accessKeyId: user.accessKeyId,
          secretAccessKey: user.secretAccessKey,
        });
      }
      case 'latency':
        aws.faults.latency(m.ms, { operation: m.operations });
        return reply(null);
      case 'clear':
        aws.faults.clear();
        return reply(null);
      case 'reset':
        aws.counters.reset();
        return reply(null);
      case 'total':
        return reply(aws.counters.total);
      case 'close':
        await aws.close();
        reply(null);
        process.disconnect();
    }
  });
}
