#!/bin/sh
# One-shot job for compose.yaml (service redis-cluster-init, image redis:7.0.x).
#
# Idempotent:
#   * every node already reports cluster_state:ok with 16384 slots assigned -> exit 0;
#   * every node is empty and alone (first start)  -> redis-cli --cluster create;
#   * every node already belongs to a cluster, which is not ok (typically: containers came back
#     with new IPs, nodes.conf still has the old ones) -> CLUSTER MEET every node with every
#     other at its current IP, so that they update each other's address;
#   * anything else (some nodes fresh, some not) -> fail and say how to reset.
# Then wait, bounded, until every node reports cluster_state:ok.
set -eu

NODES=${REDIS_CLUSTER_NODES:-"redis-0 redis-1 redis-2 redis-3 redis-4 redis-5"}
PORT=${REDIS_CLUSTER_PORT:-6379}
REPLICAS=${REDIS_CLUSTER_REPLICAS:-1}
WAIT_TRIES=${REDIS_CLUSTER_WAIT_TRIES:-60}

log() {
    printf '%s redis-cluster-init: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

# info_field HOST FIELD: one field of CLUSTER INFO (whose lines end in CRLF), empty on error.
info_field() {
    redis-cli -h "$1" -p "$PORT" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

node_ok() {
    [ "$(info_field "$1" cluster_state)" = ok ] &&
        [ "$(info_field "$1" cluster_slots_assigned)" = 16384 ]
}

all_ok() {
    for n in $NODES; do
        node_ok "$n" || return 1
    done
}

# resolve HOST: its IPv4 address on the compose network (Docker's DNS), retried briefly.
resolve() {
    tries=0
    while [ "$tries" -lt 10 ]; do
        # Word splitting is wanted: the address is the first field.
        # shellcheck disable=SC2046
        set -- $(getent ahostsv4 "$1" 2>/dev/null || getent hosts "$1" 2>/dev/null || true) "$1"
        if [ "$#" -gt 1 ]; then
            printf '%s\n' "$1"
            return 0
        fi
        tries=$((tries + 1))
        sleep 1
    done
    return 1
}

if all_ok; then
    log "cluster already formed: cluster_state:ok, 16384 slots assigned on every node"
    exit 0
fi

addrs=""
fresh=0
member=0
total=0
for n in $NODES; do
    ip=$(resolve "$n") || { log "cannot resolve $n"; exit 1; }
    addrs="$addrs $ip:$PORT"
    total=$((total + 1))
    known=$(info_field "$n" cluster_known_nodes)
    assigned=$(info_field "$n" cluster_slots_assigned)
    if [ -z "$known" ]; then
        log "$n ($ip) does not answer CLUSTER INFO (is cluster-enabled yes set?)"
        exit 1
    fi
    if [ "$known" = 1 ] && [ "$assigned" = 0 ]; then
        fresh=$((fresh + 1))
    else
        member=$((member + 1))
    fi
    log "$n is $ip:$PORT (cluster_known_nodes:$known cluster_slots_assigned:$assigned)"
done

if [ "$fresh" -eq "$total" ]; then
    log "creating the cluster:$addrs (replicas per master: $REPLICAS)"
    # Word splitting of $addrs is wanted: one argument per node.
    # shellcheck disable=SC2086
    redis-cli --cluster create $addrs --cluster-replicas "$REPLICAS" --cluster-yes
elif [ "$member" -eq "$total" ]; then
    log "cluster exists but is not ok yet; re-introducing the nodes at their current addresses"
    for n in $NODES; do
        self=$(resolve "$n"):$PORT
        for a in $addrs; do
            [ "$a" = "$self" ] && continue
            redis-cli -h "$n" -p "$PORT" cluster meet "${a%:*}" "${a##*:}" >/dev/null ||
                log "CLUSTER MEET $a from $n failed (continuing)"
        done
    done
else
    log "mixed state: $fresh of $total nodes are empty, $member already belong to a cluster."
    log "To start over, drop the data volumes: docker compose down -v"
    exit 1
fi

i=0
while [ "$i" -lt "$WAIT_TRIES" ]; do
    if all_ok; then
        log "cluster_state:ok on every node"
        exit 0
    fi
    i=$((i + 1))
    sleep 1
done
log "cluster not ok after $WAIT_TRIES s"
redis-cli -h "${NODES%% *}" -p "$PORT" cluster info >&2 || true
exit 1
