#!/usr/bin/env bash
# Starts PgBouncer in transaction pooling mode on 127.0.0.1 (a free port) in front of the
# PostgreSQL server at 127.0.0.1:5432, every database by name. Prints the address as a URL
# (postgres://postgres@127.0.0.1:PORT); the process stops with `kill $(cat "$dir/pgbouncer.pid")`.
# Usage: .ci/pgbouncer.sh <work dir>
set -euo pipefail
dir="$1"
mkdir -p "$dir"
if ! command -v pgbouncer >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ci: installing pgbouncer from Debian" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >&2
  else
    echo "ci: pgbouncer is not installed (apt-get install pgbouncer)" >&2
    exit 1
  fi
fi
port="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
# postgres, and the app role of the row-level security tests (test/helpers/pooler.ts PGBOUNCER_APP_ROLE)
printf '"postgres" ""\n"byok_rls_app" ""\n' >"$dir/users.txt"
cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options,search_path
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
INI
user_opt=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres "$dir" 2>/dev/null || true
  user_opt=(-u postgres)
fi
pgbouncer -d "${user_opt[@]}" "$dir/pgbouncer.ini" >&2
for _ in $(seq 1 50); do
  if node -e 'const c=require("net").connect(+process.argv[1],"127.0.0.1");c.on("connect",()=>process.exit(0));c.on("error",()=>process.exit(1))' "$port"; then
    echo "postgres://postgres@127.0.0.1:$port"
    exit 0
  fi
  sleep 0.1
done
echo "ci: pgbouncer did not start; see $dir/pgbouncer.log" >&2
exit 1
