/** What the method implementations of the local Cloud KMS server share. */
import type { Principal } from './auth.ts';
import type { Corruptions } from './faults.ts';
import type { IamPolicies } from './iam.ts';
import type { KeyModel } from './keys.ts';
import type { Req } from './protocol.ts';

export interface GcpServerState {
  readonly keys: KeyModel;
  readonly iam: IamPolicies;
}

/** One KeyManagementService method: a request of an authenticated principal to its answer. */
export type MethodImpl = (req: Req, principal: Principal, corrupt: Corruptions) => Record<string, unknown>;
