#!/usr/bin/env bash
# The Drizzle ORM 1.0 leg: the same clone, copied to a clean directory, with drizzle-orm and
# drizzle-kit 1.0 installed at exact versions (snapshot builds such as 1.0.0-rc.5-<sha> sort higher
# in semver, so a range would pick them), then the test files listed in .ci/drizzle-1.0-tests.txt.
# That list is the part of the suite that runs on 1.0 today; README "Drizzle versions" says what is
# and is not covered there yet.
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
mapfile -t files < <(grep -vE '^\s*(#|$)' .ci/drizzle-1.0-tests.txt)
npx vitest run "${files[@]}"
