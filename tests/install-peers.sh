#!/bin/sh
# Install the third-party programs udptime's interoperability tests talk to:
# chrony (chronyd -Q as the strictest NTP client, and as a reference server),
# rdate, ntpsec's ntpdig, socat, iproute2 for private network namespaces, a
# C compiler for the benchmark's load generator; nftables and conntrack for
# the balancer of the many-instance test; systemd for systemd-socket-activate
# and systemd-analyze (the unit files' checks; it is not started), and
# prometheus to scrape the metrics endpoint.
# With UDPTIME_IMAGE_TEST=1, also docker.io and mmdebstrap, for the opt-in test
# that builds and runs the container image (tests/test_image.py).
# And roughly, a Roughtime client and server from PyPI, in a virtualenv of its
# own, since it needs Python 3.12 or later.
# Elsewhere, or without them, the tests that need them are skipped.
# Running it again changes nothing once everything is installed.
set -eu

install_packages() {
    packages="chrony rdate ntpsec-ntpdig socat iproute2 gcc libc6-dev nftables conntrack systemd prometheus"
    if [ "${UDPTIME_IMAGE_TEST:-}" = 1 ]; then
        packages="$packages docker.io mmdebstrap"
    fi
    need=""
    for pkg in $packages; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
    done
    [ -n "$need" ] || return 0

    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-peers: no apt-get here; tests needing$need will be skipped" >&2
        return 0
    fi
    if [ "$(id -u)" -eq 0 ]; then
        sudo=""
    elif command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "install-peers: not root and no sudo; tests needing$need will be skipped" >&2
        return 0
    fi

    echo "install-peers: installing$need" >&2
    $sudo apt-get update -q >/dev/null
    # Never let a package start its daemon (a system chronyd would discipline
    # the clock; a system prometheus would take port 9090).
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -q --no-install-recommends $need >/dev/null
}

# A Python 3.12 or later that runs (pyenv's shims may name versions that
# are not selected): on the PATH, or one of pyenv's.
find_python312() {
    for candidate in python3.14 python3.13 python3.12 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
        if "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# roughly goes to $UDPTIME_ROUGHLY_VENV, by default a cache directory of the
# user's: tests/roughlypeer.py looks in the same places.
install_roughly() {
    venv="${UDPTIME_ROUGHLY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/udptime-peers/roughly-venv}"
    if "$venv/bin/roughly" --help >/dev/null 2>&1; then
        return 0
    fi
    if ! python=$(find_python312); then
        echo "install-peers: no Python 3.12 or later; the tests needing roughly will be skipped" >&2
        return 0
    fi
    echo "install-peers: installing roughly[cli] into $venv with $python" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q 'roughly[cli]' >/dev/null
    "$venv/bin/roughly" --help >/dev/null
}

install_packages
install_roughly
