#!/usr/bin/env bash
# PostCache: prepares a PostgreSQL primary for streaming replicas. The operator mounts it into
# /docker-entrypoint-initdb.d of the postgres image (run once, on the first start, against the
# entrypoint's temporary server); tests run it against a local primary.
#
# Creates (or updates the password of) the replication role and allows it replication
# connections from anywhere with scram-sha-256, then reloads the configuration. Idempotent.
#
# Env:
#   REPLICATION_USER       the role replicas connect as
#   REPLICATION_PASSWORD   its password (read by psql from the environment, never an argument)
#   POSTGRES_USER          the superuser to connect as [postgres]
#   PGHOST, PGPORT, ...    where the primary is (libpq's own variables; the unix socket by default)
set -euo pipefail

log() { printf '%s postgres-primary-init: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

: "${REPLICATION_USER:?REPLICATION_USER is required}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD is required}"
export REPLICATION_USER REPLICATION_PASSWORD

sql() { psql -v ON_ERROR_STOP=1 -X -q -At --username "${POSTGRES_USER:-postgres}" --dbname postgres "$@"; }

sql <<'SQL'
\getenv repl_user REPLICATION_USER
\getenv repl_password REPLICATION_PASSWORD
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'repl_user') AS missing \gset
\if :missing
CREATE ROLE :"repl_user" WITH REPLICATION LOGIN PASSWORD :'repl_password';
\else
ALTER ROLE :"repl_user" WITH REPLICATION LOGIN PASSWORD :'repl_password';
\endif
SQL
log "role $REPLICATION_USER can log in and replicate"

hba=$(sql -c 'SHOW hba_file')
entry="host replication $REPLICATION_USER all scram-sha-256"
if ! grep -qxF "$entry" "$hba"; then
  printf '%s\n' "$entry" >>"$hba"
  log "added to $hba: $entry"
fi
[ "$(sql -c 'SELECT pg_reload_conf()')" = t ]
log "done"
