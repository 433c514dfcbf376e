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
leg="$(mktemp -d /tmp/byok-drizzle1.XXXXXX)"
trap 'rm -rf "$leg"' EXIT
git ls-files -z | xargs -0 cp --parents -t "$leg"
cp -a node_modules "$leg/"
cd "$leg"
npm install --no-save --no-fund --no-audit --loglevel=error "drizzle-orm@$orm" "drizzle-kit@$kit"
ver() { node -e "process.stdout.write(JSON.parse(require('fs').readFileSync('node_modules/$1/package.json','utf8')).version)"; }
echo "ci: drizzle 1.0 leg: drizzle-orm $(ver drizzle-orm), drizzle-kit $(ver drizzle-kit)"
npx tsc -p tsconfig.json --noEmit
npm run build --silent
BYOK_TEST_EXCLUDE=test/packed-app.test.ts npx vitest run
