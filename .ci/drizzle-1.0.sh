#!/usr/bin/env bash
# The Drizzle ORM 1.0 leg: the same clone, copied to a clean directory, with drizzle-orm and
# drizzle-kit 1.0 installed at exact versions (snapshot builds such as 1.0.0-rc.5-<sha> sort higher
# in semver, so a range would pick them), then the library's typecheck against 1.0, its build, and
# the whole test suite, but for test/packed-app.test.ts: that one installs the packed tarball into a
# 0.45 app and a 1.0 app itself, and ran in the 0.45 leg. (The test files' own types are written
# against 0.45; on 1.0 they run, their types are not checked.)
set -euo pipefail
cd "$(dirname "$0")/.."
orm="${BYOK_DRIZZLE1_ORM:-1.0.0-rc.5}"
kit="${BYOK_DRIZZLE1_KIT:-1.0.0-rc.5}"
. .ci/clean-copy.sh
clean_copy "drizzle 1.0 leg" "drizzle-orm@$orm" "drizzle-kit@$kit"
npx tsc -p tsconfig.json --noEmit
npm run build --silent
BYOK_TEST_EXCLUDE=test/packed-app.test.ts npx vitest run
