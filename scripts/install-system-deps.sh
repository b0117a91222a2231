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
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "cachegw: missing Debian packages: ${missing[*]}" >&2
    echo "cachegw: install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi

echo "cachegw: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts packaged services on install where it can; the project never uses them and
# leaves alone whatever was already running.
