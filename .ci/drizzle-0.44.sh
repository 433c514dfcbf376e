#!/usr/bin/env bash
# The Drizzle ORM 0.44 check: the peer range admits 0.44; the Drizzle-facing test files (every
# query form, the guard and its property test, tenant isolation, blind indexes, the version seam,
# the driver allowlist) run on the newest 0.44 in a clean copy. drizzle-kit stays at 0.31 (paired
# with both 0.44 and 0.45).
set -euo pipefail
cd "$(dirname "$0")/.."
orm="${BYOK_DRIZZLE044_ORM:-0.44.7}"
. .ci/clean-copy.sh
clean_copy "drizzle 0.44 check" "drizzle-orm@$orm"
npx tsc -p tsconfig.json --noEmit
npx vitest run test/integration.test.ts test/guard.test.ts test/guard-property.test.ts \
  test/tenant-isolation.test.ts test/blind-index.test.ts test/chunks.test.ts test/drizzle-support.test.ts
