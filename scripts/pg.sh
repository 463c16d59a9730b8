#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (the Postgres job store, several `batchd serve`
# instances sharing one database): Debian's server programs, a new data directory, 127.0.0.1
# and a free port only, trust authentication (nothing else can reach it), no fsync.
#
#   scripts/pg.sh start   # initdb + start; prints the admin URL (postgres://postgres@127.0.0.1:PORT/postgres)
#   scripts/pg.sh stop    # stop it and remove its data directory
#
# Where things go: $BATCHD_PG_RUN (data dir, log, url), else a new temporary directory whose
# path `start` keeps in ${XDG_CACHE_HOME:-~/.cache}/batchd/pg-run. The server runs as the
# `postgres` user when started as root (initdb refuses root). Install: scripts/setup.sh with
# BATCHD_SETUP_POSTGRES=1 (apt's `postgresql`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
source "$here/prereqs.sh"
pointer="${XDG_CACHE_HOME:-$HOME/.cache}/batchd/pg-run"
log() { echo "pg: $*" >&2; }

as_server() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

run_dir() {
  if [ -n "${BATCHD_PG_RUN:-}" ]; then echo "$BATCHD_PG_RUN"; elif [ -f "$pointer" ]; then cat "$pointer"; fi
}

start() {
  local initdb pg_ctl run port url
  initdb=$(batchd_postgres_bin initdb) || { log "no PostgreSQL server: scripts/setup.sh installs it with BATCHD_SETUP_POSTGRES=1"; return 1; }
  pg_ctl="$(dirname "$initdb")/pg_ctl"
  run=$(run_dir)
  if [ -n "$run" ] && [ -f "$run/url" ] && as_server "$pg_ctl" -D "$run/data" status >/dev/null 2>&1; then
    cat "$run/url"; return 0
  fi
  if [ -z "${BATCHD_PG_RUN:-}" ]; then
    run=$(mktemp -d /tmp/batchd-pg.XXXXXX)
    mkdir -p "$(dirname "$pointer")" && echo "$run" >"$pointer"
  fi
  mkdir -p "$run"
  [ "$(id -u)" = 0 ] && chown postgres "$run"
  rm -rf "$run/data"
  as_server "$initdb" -D "$run/data" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$run/initdb.log" 2>&1 \
    || { log "initdb failed:"; cat "$run/initdb.log" >&2; return 1; }
  local attempt
  for attempt in 1 2 3; do
    port=$(free_port)
    # Sockets only on 127.0.0.1 and in the run directory; fsync off: the data is thrown away.
    if as_server "$pg_ctl" -D "$run/data" -l "$run/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $run -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null; then
      url="postgres://postgres@127.0.0.1:$port/postgres"
      echo "$url" >"$run/url"
      log "PostgreSQL $("$initdb" --version | awk '{print $3}') on 127.0.0.1:$port (data in $run)"
      echo "$url"
      return 0
    fi
    log "start on port $port failed (attempt $attempt):"; tail -n 5 "$run/server.log" >&2 || true
  done
  return 1
}

stop() {
  local initdb run
  run=$(run_dir)
  [ -n "$run" ] && [ -d "$run" ] || return 0
  if initdb=$(batchd_postgres_bin initdb) && [ -d "$run/data" ]; then
    as_server "$(dirname "$initdb")/pg_ctl" -D "$run/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$run"
  [ -z "${BATCHD_PG_RUN:-}" ] && rm -f "$pointer"
  log "stopped and removed $run"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: scripts/pg.sh start|stop" >&2; exit 2 ;;
esac
