/**
 * The key lifecycle of one tenant: enable / rotate / disable BYOK, rotate the data key, shred,
 * status and health, and the platform-wide re-wrap. One file per operation.
 */
export { checkHealth } from './check-health.ts';
export {
  type LifecycleOptions,
  lockTenant,
  type TenantKekStatus,
  type TenantStatus,
} from './common.ts';
export { disableByok } from './disable-byok.ts';
export { enableByok } from './enable-byok.ts';
export { type RewrapMovedResult, rewrapMovedKeys } from './rewrap-moved.ts';
export { type RewrapPlatformProgress, rewrapPlatform } from './rewrap-platform.ts';
export { rotateDek } from './rotate-dek.ts';
export { rotateKek } from './rotate-kek.ts';
export { type ShredOptions, shred } from './shred.ts';
export { status } from './status.ts';
export { verifyKek } from './verify.ts';
