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
# Debian and Ubuntu only; elsewhere the tests that need them are skipped.
set -eu

packages="chrony rdate ntpsec-ntpdig socat iproute2 gcc libc6-dev nftables conntrack systemd prometheus"
if [ "${UDPTIME_IMAGE_TEST:-}" = 1 ]; then
    packages="$packages docker.io mmdebstrap"
fi
need=""
for pkg in $packages; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
[ -n "$need" ] || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-peers: no apt-get here; tests needing$need will be skipped" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "install-peers: not root and no sudo; tests needing$need will be skipped" >&2
    exit 0
fi

echo "install-peers: installing$need" >&2
$sudo apt-get update -q >/dev/null
# Never let a package start its daemon (a system chronyd would discipline the
# clock; a system prometheus would take port 9090).
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -q --no-install-recommends $need >/dev/null
