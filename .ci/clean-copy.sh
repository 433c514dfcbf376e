# Sourced by the Drizzle version legs: `clean_copy <label> <package@version>...` copies the clone's
# tracked files and its node_modules to a fresh directory (removed on exit), enters it, installs the
# given packages there at exact versions (not saved), and prints the drizzle-orm / drizzle-kit in use.
clean_copy() {
  local label="$1"
  shift
  leg="$(mktemp -d "/tmp/byok-${label// /-}.XXXXXX")"
  trap 'rm -rf "$leg"' EXIT
  git ls-files -z | xargs -0 cp --parents -t "$leg"
  cp -a node_modules "$leg/"
  cd "$leg"
  npm install --no-save --no-fund --no-audit --loglevel=error "$@"
  echo "ci: ${label}: drizzle-orm $(installed_version drizzle-orm), drizzle-kit $(installed_version drizzle-kit)"
}

installed_version() {
  node -e "process.stdout.write(JSON.parse(require('fs').readFileSync('node_modules/$1/package.json','utf8')).version)"
}
