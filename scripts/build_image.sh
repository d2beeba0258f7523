#!/usr/bin/env bash
# Build the daemon's image where no container registry can be reached (air-gapped sites, or
# behind a proxy that intercepts TLS): the Debian base is made here with debootstrap from a
# Debian mirror, the Python base on it, then our Dockerfile unchanged on that base.
#
#   sudo bash scripts/build_image.sh                    # rtsp-pipeline:cpu
#   sudo bash scripts/build_image.sh --tag registry.local/rtsp-pipeline:cpu
#   DEBIAN_MIRROR=http://mirror.local/debian sudo -E bash scripts/build_image.sh
#
# Needs a running Docker engine (DOCKER_HOST is honoured), debootstrap (apt-get install
# debootstrap), and a Debian mirror and a Python package index the build can reach (the index:
# $PIP_INDEX_URL, written into the Python base's pip.conf, else PyPI). Nothing is pulled from a
# container registry. The classic builder is used (DOCKER_BUILDKIT=0): BuildKit fetches its
# Dockerfile frontend from Docker Hub when the file asks for one, and some engines' BuildKit needs
# images it cannot pull offline.
#
# Extra CA certificates of the host (/usr/local/share/ca-certificates/*.crt, where a
# TLS-intercepting proxy's CA is installed) go into the local Python base only, so pip inside the
# build trusts the proxy; the shipped Dockerfile stays free of any site's CA.
#
# Images: local/debian:bookworm (~120 MB), local/python:3.11-bookworm (Debian's python3 and a venv
# first on PATH: what the Dockerfile's python base needs), then the target. Existing bases are
# reused; --rebuild-base makes them again. The GPU target needs NVIDIA's TensorRT image as its
# base (nvcr.io): give a local copy with --build-arg TENSORRT_IMAGE=... where you have one.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=cpu
TAG=""
REBUILD_BASE=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) TARGET=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    --build-arg) EXTRA+=(--build-arg "$2"); shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
TAG=${TAG:-rtsp-pipeline:$TARGET}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_IMAGE=${DEBIAN_IMAGE:-local/debian:$SUITE}
PYTHON_IMAGE=${PYTHON_IMAGE:-local/python:3.11-$SUITE}
export DOCKER_BUILDKIT=0

docker info >/dev/null 2>&1 || { echo "no Docker engine answers (start dockerd, or set DOCKER_HOST)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
has_image() { [ "$REBUILD_BASE" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }
t0=$SECONDS

if ! has_image "$DEBIAN_IMAGE"; then
  command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
  echo "making $DEBIAN_IMAGE with debootstrap from $MIRROR ..."
  debootstrap --variant=minbase "$SUITE" "$work/root" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work"/root/var/lib/apt/lists/* "$work"/root/var/cache/apt/archives/*.deb
  tar -C "$work/root" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$work/root"
fi

if ! has_image "$PYTHON_IMAGE"; then
  echo "making $PYTHON_IMAGE on $DEBIAN_IMAGE ..."
  mkdir -p "$work/python/extra-ca"
  cp /usr/local/share/ca-certificates/*.crt "$work/python/extra-ca/" 2>/dev/null || true
  cat > "$work/python/Dockerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null && python3 -m venv /opt/python \\
 && printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n${PIP_INDEX_URL:+index-url = $PIP_INDEX_URL\\n}' > /opt/python/pip.conf
ENV PATH=/opt/python/bin:\$PATH LANG=C.UTF-8
CMD ["python3"]
EOF
  docker build --network host -t "$PYTHON_IMAGE" "$work/python" > "$work/python.log" 2>&1 \
    || { tail -20 "$work/python.log" >&2; exit 1; }
fi

echo "building $TAG (target $TARGET) on $PYTHON_IMAGE ..."
docker build --network host -f deploy/docker/Dockerfile --target "$TARGET" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
  "${EXTRA[@]}" -t "$TAG" . > "$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; exit 1; }
size=$(docker image inspect -f '{{.Size}}' "$TAG")
echo "built $TAG in $((SECONDS - t0)) s: $((size / 1000000)) MB"
