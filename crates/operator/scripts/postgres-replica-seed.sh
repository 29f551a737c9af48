#!/usr/bin/env bash
# PostCache: seeds a PostgreSQL read replica by base backup from the primary. The operator runs it
# as an init container of the replica StatefulSet (postgres image, the data volume mounted);
# tests run it against a local primary.
#
# When PGDATA already holds a data directory, it does nothing: the replica resumes streaming on
# its own. Otherwise it waits for the primary and runs `pg_basebackup -R -X stream`, which writes
# standby.signal and primary_conninfo, so the server starts as a streaming hot standby. A failed
# backup leaves PGDATA empty again, so a retry starts over.
#
# Env:
#   PRIMARY_HOST, PRIMARY_PORT   the primary (its -rw Service)
#   REPLICATION_USER             the replication role (see postgres-primary-init.sh)
#   PGPASSWORD                   its password (libpq reads it from the environment)
#   PGDATA                       the replica's data directory; use a subdirectory of the volume
#   SEED_TIMEOUT_SECONDS         how long to wait for the primary [300]
set -euo pipefail

log() { printf '%s postgres-replica-seed: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

: "${PRIMARY_HOST:?PRIMARY_HOST is required}"
: "${PRIMARY_PORT:?PRIMARY_PORT is required}"
: "${REPLICATION_USER:?REPLICATION_USER is required}"
: "${PGPASSWORD:?PGPASSWORD is required}"
: "${PGDATA:?PGDATA is required}"
timeout=${SEED_TIMEOUT_SECONDS:-300}

if [ -f "$PGDATA/PG_VERSION" ]; then
  log "$PGDATA already holds a data directory; nothing to do"
  exit 0
fi
mkdir -p "$PGDATA"
if [ -n "$(ls -A "$PGDATA")" ]; then
  die "$PGDATA is not empty and holds no data directory; refusing to write into it"
fi
chmod 0700 "$PGDATA"

deadline=$((SECONDS + timeout))
# -d postgres: without it the check connects to a database named after the role, and the
# primary logs a FATAL "database does not exist" for every try.
until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" -d postgres; do
  [ "$SECONDS" -lt "$deadline" ] || die "the primary $PRIMARY_HOST:$PRIMARY_PORT is not ready after ${timeout}s"
  sleep 1
done

log "base backup from $PRIMARY_HOST:$PRIMARY_PORT into $PGDATA"
if ! pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" -w \
  -D "$PGDATA" -R -X stream -c fast; then
  # PGDATA was empty before: everything in it is this attempt's.
  find "$PGDATA" -mindepth 1 -delete
  die "pg_basebackup failed; $PGDATA is empty again"
fi
log "done"
