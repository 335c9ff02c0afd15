#!/usr/bin/env bash
# Set up this checkout on a Debian/Ubuntu machine and run something in it.
#
#   scripts/dev.sh setup      apt packages (bubblewrap, redis-server, docker-registry, busybox-static)
#                             + .venv with the package and its test extras
#   scripts/dev.sh examples   setup, then the example suite on the local backend
#   scripts/dev.sh test       setup, then the test suite on three xdist workers (what CI runs;
#                             the tests wait on processes often enough to keep two cores busy),
#                             handed out two at a time, the long ones first (tests/conftest.py)
#
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(bubblewrap util-linux slirp4netns redis-server docker-registry busybox-static openssl zstd python3-venv)
VENV=${VENV:-.venv}

need_apt() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # the distro's registry service is not wanted; tests start their own on 127.0.0.1
    $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
}

setup() {
    need_apt
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
}

case "${1:-}" in
    setup) setup ;;
    examples) setup; shift; exec "$VENV/bin/python" -m pytest examples --modal-sandbox=local "$@" ;;
    test) setup; shift; exec "$VENV/bin/python" -m pytest -n 3 --maxschedchunk 2 "$@" ;;
    *) echo "usage: $0 {setup|examples|test} [pytest args...]" >&2; exit 2 ;;
esac
