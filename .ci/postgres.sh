#!/usr/bin/env bash
# A throwaway PostgreSQL server for the Optuna tests (tests/test_optuna_postgres.py).
#
#   source .ci/postgres.sh          # starts it; exports NEVE_TEST_POSTGRES_URL, NEVE_PG_DIR;
#                                   # defines neve_pg_stop (call it when done)
#   bash .ci/postgres.sh start [DIR]   # prints `export NEVE_TEST_POSTGRES_URL=...` lines
#   bash .ci/postgres.sh stop DIR      # stops the server in DIR and deletes DIR
#
# Installs Debian's postgresql when pg_ctl is missing (needs root and apt), initdb's a
# cluster in a temporary folder, starts it on a free port of 127.0.0.1 (as the `postgres`
# system user when run as root: PostgreSQL refuses to run as root) with password
# authentication, and creates the database `neve_test`. Nothing persists: fsync is off.

_neve_pg_bindir() {
    local d
    if command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    return 1
}

_neve_pg_install() {
    if _neve_pg_bindir >/dev/null; then return 0; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "postgres.sh: pg_ctl not found and cannot apt-get install postgresql (need root + apt)" >&2
        return 1
    fi
    echo "postgres.sh: installing postgresql with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || return 1
    _neve_pg_bindir >/dev/null
}

_neve_pg_free_port() {
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1; then
            "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
            return 0
        fi
    done
    echo $(( 20000 + RANDOM % 20000 ))
}

# run a command as the cluster owner
_neve_pg_as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# neve_pg_start [DIR]: start a server in DIR (default: a new temp dir); prints export lines
neve_pg_start() {
    local bindir dir port password user=neve db=neve_test
    _neve_pg_install || return 1
    bindir="$(_neve_pg_bindir)" || return 1
    dir="${1:-$(mktemp -d "${TMPDIR:-/tmp}/neve-pg.XXXXXX")}"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        if ! id postgres >/dev/null 2>&1; then
            echo "postgres.sh: running as root but there is no 'postgres' user to run the server as" >&2
            return 1
        fi
        chown postgres "$dir"
    fi
    chmod 700 "$dir"
    password="pw$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s\n' "$password" > "$dir/pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/pwfile"
    _neve_pg_as_owner "$bindir/initdb" -D "$dir/data" -U "$user" --pwfile="$dir/pwfile" \
        --auth=scram-sha-256 -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
        echo "postgres.sh: initdb failed:" >&2; cat "$dir/initdb.log" >&2; return 1; }
    rm -f "$dir/pwfile"
    local try
    for try in 1 2 3; do
        port="$(_neve_pg_free_port)"
        if _neve_pg_as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
            start >/dev/null; then
            break
        fi
        port=""
    done
    if [ -z "$port" ]; then
        echo "postgres.sh: the server did not start:" >&2; tail -20 "$dir/server.log" >&2; return 1
    fi
    PGPASSWORD="$password" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$user" "$db" || {
        echo "postgres.sh: createdb failed" >&2; return 1; }
    echo "export NEVE_TEST_POSTGRES_URL=postgresql://$user:$password@127.0.0.1:$port/$db"
    echo "export NEVE_PG_DIR=$dir"
}

# neve_pg_stop [DIR]: stop the server in DIR (default: $NEVE_PG_DIR) and delete DIR
neve_pg_stop() {
    local dir="${1:-${NEVE_PG_DIR:-}}" bindir
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    bindir="$(_neve_pg_bindir)" || return 0
    [ -f "$dir/data/postmaster.pid" ] && _neve_pg_as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1
    rm -rf "$dir"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # sourced: start and export into the caller's shell
    if _neve_pg_exports="$(neve_pg_start)"; then
        eval "$_neve_pg_exports"
        echo "postgres.sh: PostgreSQL at $(echo "$NEVE_TEST_POSTGRES_URL" | sed -E 's#://([^:/@]*):[^@]*@#://\1:***@#') (stop with neve_pg_stop)" >&2
    else
        echo "postgres.sh: could not start PostgreSQL; the postgres tests will try again or skip" >&2
    fi
    unset _neve_pg_exports
else
    set -u
    case "${1:-start}" in
        start) neve_pg_start "${2:-}" ;;
        stop) neve_pg_stop "${2:-}" ;;
        *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
    esac
fi
