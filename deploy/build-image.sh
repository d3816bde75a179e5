#!/bin/sh
# Build udptime's container image from this source tree.
#
#   deploy/build-image.sh [--tag TAG] [--base IMAGE]
#
# --tag TAG     the image's name (default udptime:VERSION, VERSION udptime's)
# --base IMAGE  the base image (default udptime-base:bookworm). The default
#               base is made here when the daemon does not have it yet, from
#               Debian's packages (mmdebstrap, as root), then "docker import":
#               no image registry is needed. Any image with python3 >= 3.11
#               and its venv module will do where a registry is reachable,
#               e.g. python:3.11-slim.
#
# DOCKER   the container command and its options (default "docker"), e.g.
#          DOCKER="docker -H unix:///tmp/d/docker.sock" or DOCKER=podman
# PYTHON   the Python that builds udptime's wheel (default python3, with pip)
#
# udptime's wheel and its dependencies' wheels (Twisted, and those of its "nts"
# extra: pyOpenSSL, service_identity...) are fetched here,
# with the host's pip and its configuration, for the base image's Python: the
# image build itself runs with no network at all (--network none).
set -eu

tag=""
base="udptime-base:bookworm"
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --base) base="$2"; shift 2 ;;
        *) echo "build-image.sh: unknown argument $1 (--tag TAG, --base IMAGE)" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
tree=$(dirname "$here")
docker=${DOCKER:-docker}
python=${PYTHON:-python3}
version=$("$python" -c 'import re, sys; print(re.search(r"__version__ = \"([^\"]+)\"", open(sys.argv[1]).read()).group(1))' "$tree/udptime/__init__.py")
[ -n "$tag" ] || tag="udptime:$version"

context=$(mktemp -d "${TMPDIR:-/tmp}/udptime-image.XXXXXX")
trap 'rm -rf "$context"' EXIT INT TERM

if ! $docker image inspect "$base" >/dev/null 2>&1; then
    if [ "$base" != "udptime-base:bookworm" ]; then
        echo "build-image.sh: the daemon has no image $base (pull it first)" >&2
        exit 1
    fi
    command -v mmdebstrap >/dev/null 2>&1 || {
        echo "build-image.sh: making the base image needs mmdebstrap (apt-get install mmdebstrap)" >&2
        exit 1
    }
    echo "build-image.sh: making $base from Debian bookworm's packages" >&2
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        bookworm "$context/rootfs.tar"
    $docker import "$context/rootfs.tar" "$base" >/dev/null
    rm -f "$context/rootfs.tar"
fi

# The base's Python, for which the dependencies' wheels are fetched here (on
# the host, through its pip configuration), so that the image build itself
# needs no network.
set -- $($docker run --rm --network none --entrypoint python3 "$base" -c \
    'import platform, sys; print("%d%d" % sys.version_info[:2], platform.machine())')
pyversion=$1
machine=$2

echo "build-image.sh: fetching udptime's wheel and its dependencies for CPython $pyversion on $machine" >&2
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$context" "$tree"
"$python" -m pip download --quiet --only-binary=:all: --dest "$context" \
    --python-version "$pyversion" --implementation cp --abi "cp$pyversion" \
    --platform "manylinux2014_$machine" --platform "manylinux_2_17_$machine" \
    "$(echo "$context"/udptime-*.whl)[nts]"
cp "$here/container.py" "$context/"

$docker build --network none --build-arg BASE="$base" --tag "$tag" \
    --file "$here/Containerfile" "$context"
echo "build-image.sh: built $tag" >&2
