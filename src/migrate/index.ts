/** The retrofit engine: encrypt existing plaintext columns online, resumably; verify; roll back. */
export {
  type BackfillOptions,
  type BackfillProgress,
  type BackfillResult,
  backfillJobId,
  type RetrofitOperation,
  rollbackBackfill,
  runBackfill,
  type ValueCounts,
} from './backfill.ts';
export type { RetrofitColumn, RetrofitTableConfig } from './target.ts';
export {
  type PlanColumn,
  type PlanJob,
  type PlanReport,
  planBackfill,
  type VerifyColumnReport,
  type VerifyOptions,
  type VerifyReport,
  verifyBackfill,
} from './verify.ts';
