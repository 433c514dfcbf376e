/** What the KMS and STS endpoints of the local AWS server share: its state and its settings. */
import type { CallLog, FaultBox } from './faults.ts';
import type { IamDirectory } from './identity.ts';
import type { KeyStore } from './keys.ts';

export interface AwsServerState {
  readonly keys: KeyStore;
  readonly iam: IamDirectory;
  readonly faults: FaultBox;
  readonly calls: CallLog;
  /** Accepted difference between a request's `X-Amz-Date` and the server clock. */
  readonly maxSkewMs: number;
}
