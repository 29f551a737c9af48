#!/usr/bin/env bash
# PostCache: creates a PostgreSQL primary's data directory. The operator runs it as the init
# container of the primary StatefulSet (the postgres image, the data volume mounted), so the
# server container runs `postgres` itself and no image's entrypoint script is needed; tests run it
# against a local data directory.
#
# When PGDATA already holds a data directory, it does nothing. Otherwise it runs initdb into a
# staging directory beside PGDATA, starts a server there that listens only on a private unix
# socket, creates the database and the replication role, allows password (scram-sha-256)
# connections from the network for both, stops the server, and only then renames the staging
# directory to PGDATA: a run that dies half-way leaves no PGDATA, and the next run starts over.
#
# Env:
#   PGDATA                 the data directory; use a subdirectory of the volume
#   POSTGRES_USER          the superuser initdb creates (the service connects as it)
#   POSTGRES_PASSWORD      its password (handed to initdb in a 0600 file, never an argument)
#   POSTGRES_DB            the database to create
#   REPLICATION_USER       the role replicas connect as
#   REPLICATION_PASSWORD   its password (read by psql from the environment, never an argument)
# Needs on PATH: initdb, pg_ctl, psql (the official image and Debian's packages both have them).
# The cluster's locale is C (UTF-8 encoding, byte-order collation): it needs no locale data in the
# image.
set -euo pipefail

log() { printf '%s postgres-primary-init: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

: "${PGDATA:?PGDATA is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
: "${POSTGRES_DB:?POSTGRES_DB is required}"
: "${REPLICATION_USER:?REPLICATION_USER is required}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD is required}"
export POSTGRES_USER POSTGRES_DB REPLICATION_USER REPLICATION_PASSWORD

if [ -f "$PGDATA/PG_VERSION" ]; then
  log "$PGDATA already holds a data directory; nothing to do"
  exit 0
fi
if [ -e "$PGDATA" ] && [ -n "$(ls -A "$PGDATA")" ]; then
  die "$PGDATA is not empty and holds no data directory; refusing to write into it"
fi

staging="$PGDATA.init"
work=$(mktemp -d)
cleanup() {
  if [ -f "$staging/postmaster.pid" ]; then pg_ctl -D "$staging" -m immediate -w stop >&2 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$staging" # what an interrupted run left
mkdir -p "$(dirname "$PGDATA")"

umask 077
printf '%s\n' "$POSTGRES_PASSWORD" >"$work/pwfile"
log "initdb into $staging"
initdb -D "$staging" --username="$POSTGRES_USER" --pwfile="$work/pwfile" \
  --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >&2
rm -f "$work/pwfile"
{
  printf 'host all all all scram-sha-256\n'
  printf 'host replication %s all scram-sha-256\n' "$REPLICATION_USER"
} >>"$staging/pg_hba.conf"

pg_ctl -D "$staging" -w -t 120 -l "$work/server.log" \
  -o "-c listen_addresses='' -c unix_socket_directories='$work'" start >&2 ||
  { cat "$work/server.log" >&2; die "the initial server did not start"; }
psql -h "$work" -v ON_ERROR_STOP=1 -X -q -At --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv db POSTGRES_DB
\getenv repl_user REPLICATION_USER
\getenv repl_password REPLICATION_PASSWORD
SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') AS missing \gset
\if :missing
CREATE DATABASE :"db";
\endif
CREATE ROLE :"repl_user" WITH REPLICATION LOGIN PASSWORD :'repl_password';
SQL
pg_ctl -D "$staging" -m fast -w -t 120 stop >&2

rmdir "$PGDATA" 2>/dev/null || true
mv "$staging" "$PGDATA"
log "database $POSTGRES_DB, superuser $POSTGRES_USER and replication role $REPLICATION_USER ready in $PGDATA"
