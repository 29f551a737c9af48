#!/usr/bin/env bash
# PostCache: forms and reshapes a Redis Cluster from inside a redis pod (the operator runs it as a
# Job with the redis image) or, in tests, against local redis-server processes.
#
#   redis-cluster.sh bootstrap      form the cluster from the first SHARDS*(1+REPLICAS) nodes
#   redis-cluster.sh add-shards     join new masters, move slots onto them, attach replicas
#   redis-cluster.sh drain-shards   move every slot off the masters that go away, then remove them
#
# Every subcommand reads the live cluster state and does only what is missing, so running it again
# is a no-op and running it after an interruption finishes the job (open slots are fixed first).
#
# Roles come from the cluster, not from positions, except for one rule: the first
# SHARDS*(1+REPLICAS) entries of REDIS_NODES are the members that stay (the StatefulSet keeps its
# lowest ordinals), and entries beyond them are leaving. New masters are taken from members not yet
# in the cluster, in list order; their replicas likewise.
#
# Env:
#   REDIS_NODES               host:port of every node, space-separated, in pod-ordinal order
#   REDIS_SHARDS              the target number of masters
#   REDIS_REPLICAS_PER_SHARD  replicas per master
#   REDIS_PASSWORD            optional; handed to redis-cli as REDISCLI_AUTH, never as an argument
#   REDIS_TIMEOUT_SECONDS     how long to wait for nodes and for the cluster to settle [300]
set -euo pipefail

log() { printf '%s redis-cluster: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

: "${REDIS_NODES:?REDIS_NODES is required}"
: "${REDIS_SHARDS:?REDIS_SHARDS is required}"
: "${REDIS_REPLICAS_PER_SHARD:?REDIS_REPLICAS_PER_SHARD is required}"
TIMEOUT=${REDIS_TIMEOUT_SECONDS:-300}
if [ -n "${REDIS_PASSWORD:-}" ]; then
  export REDISCLI_AUTH="$REDIS_PASSWORD"
fi
unset REDIS_PASSWORD

# cli host:port args... — one redis-cli call against one node.
cli() {
  local addr=$1; shift
  redis-cli -h "${addr%:*}" -p "${addr##*:}" "$@"
}

# resolve host:port → ip:port (cluster gossip and CLUSTER NODES speak IPs).
resolve() {
  local host=${1%:*} port=${1##*:} ip
  ip=$(getent ahostsv4 "$host" 2>/dev/null | awk 'NR == 1 { print $1 }') || true
  [ -n "$ip" ] || return 1
  printf '%s:%s\n' "$ip" "$port"
}

# info_field host:port name — one field of CLUSTER INFO.
info_field() {
  cli "$1" cluster info 2>/dev/null | tr -d '\r' | awk -F: -v k="$2" '$1 == k { print $2 }'
}

# joined host:port — true when the node belongs to a cluster (knows others or owns slots).
joined() {
  local known slots
  known=$(info_field "$1" cluster_known_nodes)
  slots=$(info_field "$1" cluster_slots_assigned)
  [ "${known:-1}" -gt 1 ] || [ "${slots:-0}" -gt 0 ]
}

# covered host:port — true when the node sees a healthy cluster with every slot assigned.
covered() {
  [ "$(info_field "$1" cluster_state)" = ok ] &&
    [ "$(info_field "$1" cluster_slots_assigned)" = 16384 ]
}

# table host:port — the cluster as one line per node: id addr role master-id slot-count.
table() {
  cli "$1" cluster nodes | tr -d '\r' | awk '
    NF >= 8 && $3 !~ /noaddr|handshake/ {
      addr = $2; sub(/[@,].*/, "", addr)
      role = ($3 ~ /master/) ? "master" : "replica"
      n = 0
      for (i = 9; i <= NF; i++) {
        if ($i ~ /^\[/) continue
        split($i, r, "-")
        n += (r[2] == "") ? 1 : r[2] - r[1] + 1
      }
      print $1, addr, role, $4, n
    }'
}

# wait_for what command... — retries the command until it succeeds or the deadline passes.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 1
  done
}

# The node list, resolved; MEMBERS stay, LEAVING go away.
ALL=() MEMBERS=() LEAVING=()
load_nodes() {
  local want=$((REDIS_SHARDS * (1 + REDIS_REPLICAS_PER_SHARD))) node addr i=0
  for node in $REDIS_NODES; do
    wait_for "$node to resolve" resolve "$node" >/dev/null
    addr=$(resolve "$node")
    ALL+=("$addr")
    if [ "$i" -lt "$want" ]; then MEMBERS+=("$addr"); else LEAVING+=("$addr"); fi
    i=$((i + 1))
  done
  [ "${#MEMBERS[@]}" -eq "$want" ] ||
    die "REDIS_NODES has ${#MEMBERS[@]} nodes, $REDIS_SHARDS shards x (1 + $REDIS_REPLICAS_PER_SHARD) need $want"
  for addr in "${MEMBERS[@]}"; do
    wait_for "$addr to answer PING" pong "$addr"
  done
}
pong() { [ "$(cli "$1" ping 2>/dev/null)" = PONG ]; }

# seed — the first member that sees a cluster with every slot assigned.
seed() {
  local addr
  for addr in "${MEMBERS[@]}"; do
    if covered "$addr"; then printf '%s\n' "$addr"; return 0; fi
  done
  return 1
}

# settle seed — waits until every node agrees on the configuration; fixes open slots (left by an
# interrupted migration) if the cluster does not settle by itself.
settle() {
  local deadline=$((SECONDS + 20))
  until redis-cli --cluster check "$1" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "the cluster does not settle by itself; running --cluster fix"
      redis-cli --cluster fix "$1" --cluster-yes >&2 || true
      wait_for "the cluster to settle" check_quietly "$1"
      return 0
    fi
    sleep 1
  done
}
check_quietly() { redis-cli --cluster check "$1" >/dev/null 2>&1; }

# known seed addr — true when addr sees the whole, healthy cluster and every node of it lists addr
# (slots cannot move onto a node that answers CLUSTERDOWN or that a peer does not know yet).
known() {
  local peer
  covered "$2" || return 1
  for peer in $(table "$1" | awk '{ print $2 }'); do
    table "$peer" | awk -v a="$2" '$2 == a { found = 1 } END { exit !found }' || return 1
  done
}

# attach_replicas seed — gives every master REDIS_REPLICAS_PER_SHARD replicas: first from members
# not yet in the cluster, then by moving surplus replicas of other masters.
attach_replicas() {
  local seed=$1 want=$REDIS_REPLICAS_PER_SHARD addr lonely spare
  while :; do
    # The master with the fewest replicas, if it has fewer than wanted.
    lonely=$(table "$seed" | awk -v want="$want" '
      $3 == "master" && $5 > 0 { count[$1] += 0 }
      $3 == "replica" { count[$4]++ }
      END { for (id in count) if (count[id] < want) { print count[id], id } }' |
      sort -n | awk 'NR == 1 { print $2 }')
    [ -n "$lonely" ] || return 0
    spare=""
    for addr in "${MEMBERS[@]}"; do
      if ! joined "$addr"; then spare=$addr; break; fi
    done
    if [ -n "$spare" ]; then
      log "adding $spare as a replica of $lonely"
      redis-cli --cluster add-node "$spare" "$seed" --cluster-slave --cluster-master-id "$lonely" >&2
      wait_for "$spare to follow $lonely" follows "$seed" "$spare" "$lonely"
      continue
    fi
    spare=$(surplus_replica "$seed")
    [ -n "$spare" ] || { log "no node left to give $lonely a replica"; return 0; }
    log "moving replica $spare to $lonely"
    cli "$spare" cluster replicate "$lonely" >&2
    wait_for "$spare to follow $lonely" follows "$seed" "$spare" "$lonely"
  done
}

# surplus_replica seed — a member replica whose master has more replicas than wanted.
surplus_replica() {
  local members=" ${MEMBERS[*]} "
  table "$1" | awk -v want="$REDIS_REPLICAS_PER_SHARD" -v members="$members" '
    $3 == "replica" && index(members, " " $2 " ") { n[$4]++; if (n[$4] > want) print $2 }' |
    head -n 1
}

follows() { table "$1" | awk -v a="$2" -v m="$3" '$2 == a && $4 == m { ok = 1 } END { exit !ok }'; }

bootstrap() {
  local addr s
  if s=$(seed); then
    log "the cluster is formed (seen from $s); nothing to do"
    return 0
  fi
  for addr in "${MEMBERS[@]}"; do
    if joined "$addr"; then
      # An interrupted create: nothing has been stored yet (no slot was served), so start over.
      [ "$(cli "$addr" dbsize)" = 0 ] || die "$addr is half-joined and holds keys; fix it by hand"
      log "resetting half-joined $addr"
      cli "$addr" cluster reset hard >&2
    fi
  done
  log "creating a cluster of ${#MEMBERS[@]} nodes with $REDIS_REPLICAS_PER_SHARD replicas per master"
  redis-cli --cluster create "${MEMBERS[@]}" --cluster-replicas "$REDIS_REPLICAS_PER_SHARD" --cluster-yes >&2
  for addr in "${MEMBERS[@]}"; do
    wait_for "$addr to see the whole cluster" sees_all "$addr"
    wait_for "$addr to see every node in its role" roles_settled "$addr"
  done
}
sees_all() { covered "$1" && [ "$(info_field "$1" cluster_known_nodes)" -ge "${#MEMBERS[@]}" ]; }

# roles_settled host:port — the node sees $REDIS_SHARDS masters serving slots and every other
# member as a replica (gossip spreads the replicas' roles after the create returns).
roles_settled() {
  table "$1" | awk -v m="$REDIS_SHARDS" -v n="${#MEMBERS[@]}" '
    $3 == "master" && $5 > 0 { masters++ }
    $3 == "replica" { replicas++ }
    END { exit !(masters == m && replicas == n - m) }'
}

add_shards() {
  local s masters addr
  s=$(seed) || die "no member sees a formed cluster; run bootstrap first"
  settle "$s"
  masters=$(table "$s" | awk '$3 == "master"' | wc -l)
  for addr in "${MEMBERS[@]}"; do
    [ "$masters" -lt "$REDIS_SHARDS" ] || break
    joined "$addr" && continue
    log "adding $addr as a master"
    redis-cli --cluster add-node "$addr" "$s" >&2
    wait_for "$addr to join" known "$s" "$addr"
    masters=$((masters + 1))
  done
  [ "$masters" -ge "$REDIS_SHARDS" ] || die "only $masters masters for $REDIS_SHARDS shards"
  settle "$s"
  log "rebalancing slots onto empty masters"
  redis-cli --cluster rebalance "$s" --cluster-use-empty-masters --cluster-yes >&2
  settle "$s"
  attach_replicas "$s"
  settle "$s"
}

drain_shards() {
  local s leaving=" ${LEAVING[*]} " draining=() weights=() line id addr role
  s=$(seed) || die "no member sees a formed cluster"
  settle "$s"
  # Masters to empty: every leaving one, and member masters beyond the first REDIS_SHARDS.
  local kept=0
  while read -r id addr role _ slots; do
    if [ "$role" != master ] || [ "$slots" -eq 0 ]; then continue; fi
    if [[ $leaving == *" $addr "* ]] || [ "$kept" -ge "$REDIS_SHARDS" ]; then
      draining+=("$id")
    else
      kept=$((kept + 1))
    fi
  done < <(members_first "$s")
  if [ "${#draining[@]}" -gt 0 ]; then
    for id in "${draining[@]}"; do weights+=("$id=0"); done
    log "moving every slot off ${#draining[@]} master(s)"
    redis-cli --cluster rebalance "$s" --cluster-weight "${weights[@]}" --cluster-yes >&2
    settle "$s"
    for id in "${draining[@]}"; do
      line=$(table "$s" | awk -v id="$id" '$1 == id')
      [ "$(awk '{ print $5 }' <<<"$line")" = 0 ] || die "master $id still owns slots: $line"
    done
  fi
  # Leaving nodes go, replicas first (a master emptied above has turned replica or owns nothing).
  while read -r id addr role _; do
    [[ $leaving == *" $addr "* ]] || continue
    log "removing $role $addr"
    redis-cli --cluster del-node "$s" "$id" >&2
    # A fresh node id: the cluster bans a forgotten id for 60 s, which would stall a later re-add.
    cli "$addr" cluster reset hard >/dev/null 2>&1 || true
  done < <(table "$s" | sort -k3,3r)
  settle "$s"
  attach_replicas "$s"
  settle "$s"
}

# members_first seed — the table in REDIS_NODES order (members, then leaving nodes).
members_first() {
  local t addr
  t=$(table "$1")
  for addr in "${ALL[@]}"; do
    awk -v a="$addr" '$2 == a' <<<"$t"
  done
}

command -v redis-cli >/dev/null || die "redis-cli is not installed"
case "${1:-}" in
  bootstrap) load_nodes; bootstrap ;;
  add-shards) load_nodes; add_shards ;;
  drain-shards) load_nodes; drain_shards ;;
  *) die "usage: $0 bootstrap|add-shards|drain-shards" ;;
esac
log "${1} done"
