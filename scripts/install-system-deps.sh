#!/usr/bin/env bash
# Installs the Debian packages the project needs when they are missing.
# Usage: scripts/install-system-deps.sh run|test
# As root it uses apt-get; otherwise it names the missing packages and fails.
set -euo pipefail

profile=${1:-run}

have_pg() {
    command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
have_pg || missing+=(postgresql)
if [ "$profile" = test ]; then
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    # promtool (check and unit-test the alerting rules) comes with Debian's prometheus package.
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    # The typed Node client, the README's Node example and the docs pages in a real browser.
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)  # the image's shell scripts
    # The load balancer of the fleet benchmark and tests (bench/fleet.py).
    command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
    # The fault lab's partitions and losses (devstack/netlab.py); ip comes with iproute2.
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null | grep -q 'ok installed' ||
        missing+=(fonts-dejavu-core)
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "cachegw: missing Debian packages: ${missing[*]}" >&2
    echo "cachegw: install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi

echo "cachegw: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
echo "cachegw: apt-get update ..."
apt-get update -qq
# Debian starts packaged services on install where it can; the project never uses them and
# leaves alone whatever was already running. So, during the install only, a policy-rc.d that
# denies every start (exit 101; invoke-rc.d and deb-systemd-invoke both obey it), unless the
# system already has a policy of its own, which is then left as it is.
policy=/usr/sbin/policy-rc.d
own_policy=
remove_policy() {
    if [ -n "$own_policy" ]; then
        rm -f "$policy"
        own_policy=
    fi
}
trap remove_policy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ ! -e "$policy" ] && [ ! -L "$policy" ]; then
    own_policy=1
    printf '#!/bin/sh\n# Temporary, from cachegw scripts/install-system-deps.sh: no service starts.\nexit 101\n' \
        >"$policy"
    chmod 0755 "$policy"
fi

# Prometheus servers running before the install, which are never touched.
prometheus_pids() {
    local dir
    for dir in /proc/[0-9]*; do
        [ "$(cat "$dir/comm" 2>/dev/null)" = prometheus ] && echo "${dir#/proc/}"
    done
    return 0
}
prometheus_before=" $(prometheus_pids | tr '\n' ' ') "

echo "cachegw: apt-get install ${#missing[@]} package(s) (a few minutes for postgresql or chromium) ..."
started=$SECONDS
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "cachegw: Debian packages installed ($((SECONDS - started)) s)"
remove_policy

if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    # The project only needs promtool: keep the packaged server from starting at boot too
    # (it would take :9090, which the compose stack publishes).
    deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
    update-rc.d prometheus disable >/dev/null 2>&1 || true
    # Should a policy (the system's own, or none being obeyed) have let the package start its
    # server anyway, stop exactly the servers that this install started.
    for pid in $(prometheus_pids); do
        if [[ "$prometheus_before" != *" $pid "* ]] &&
            [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/prometheus ]; then
            echo "cachegw: stopping the prometheus server (pid $pid) the package started"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    done
fi
