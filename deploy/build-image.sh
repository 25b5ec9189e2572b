#!/usr/bin/env bash
# Builds the Switchyard image (tag switchyard:local unless --tag says otherwise).
#
#   deploy/build-image.sh [--offline] [--binary PATH]   (default) no registry needed: the
#       runtime stage of deploy/Dockerfile on a Debian base made here with debootstrap and
#       `docker import`, plus a switchyard binary built on this host (stripped; by default
#       `cargo build --release`)
#   deploy/build-image.sh --source                       the multi-stage build from source,
#       which pulls its builder and base images (BUILDER_IMAGE, BASE_IMAGE build args)
#
# Options:
#   --tag NAME          the image [switchyard:local]
#   --base-tag NAME     offline: the debootstrap base image, made when missing
#                       [switchyard-base:bookworm]
#   --service-images PREFIX
#                       also build PREFIX-etcd:local and PREFIX-nats:local on the base, from
#                       Debian's etcd and nats-server packages (for server mode without a
#                       registry: ETCD_IMAGE=PREFIX-etcd:local NATS_IMAGE=PREFIX-nats:local)
#   --label KEY=VALUE   added to every image built (repeatable)
# Needs: docker; offline also debootstrap (Debian package) and root for it.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=offline tag=switchyard:local base_tag=switchyard-base:bookworm binary="" services=""
labels=()
while (($#)); do
  case "$1" in
    --offline) mode=offline ;;
    --source) mode=source ;;
    --binary) binary=$2; shift ;;
    --tag) tag=$2; shift ;;
    --base-tag) base_tag=$2; shift ;;
    --service-images) services=$2; shift ;;
    --label) labels+=(--label "$2"); shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'build-image: %s\n' "$*" >&2; }

if [ "$mode" = source ]; then
  docker build "${labels[@]}" -f deploy/Dockerfile -t "$tag" .
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A minimal Debian 12 root file system, trimmed the way slim images are, as an image.
if ! docker image inspect "$base_tag" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install debootstrap"; exit 1; }
  log "making $base_tag with debootstrap (about half a minute)"
  mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work"/rootfs/usr/share/{doc,man,info,locale}/* "$work"/rootfs/var/lib/apt/lists/* \
    "$work"/rootfs/var/cache/apt/*.bin "$work"/rootfs/var/cache/apt/archives/*.deb
  tar -C "$work/rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$base_tag" >/dev/null
  rm -rf "$work/rootfs"
fi

if [ -z "$binary" ]; then
  log "building the release binary"
  cargo build --release --locked --bin switchyard
  binary=target/release/switchyard
fi
[ -x "$binary" ] || { log "no executable at $binary"; exit 1; }

# The runtime stage alone (nothing to send: it copies no files), then the binary on top.
runtime="${tag%%:*}-runtime:build"
docker build -q "${labels[@]}" --build-arg BASE_IMAGE="$base_tag" --target runtime \
  -t "$runtime" - <deploy/Dockerfile >/dev/null
mkdir -p "$work/ctx"
strip -o "$work/ctx/switchyard" "$binary"
printf 'FROM %s\nCOPY switchyard /usr/local/bin/switchyard\n' "$runtime" >"$work/ctx/Dockerfile"
docker build -q "${labels[@]}" -t "$tag" "$work/ctx" >/dev/null
docker rmi "$runtime" >/dev/null
log "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"

if [ -n "$services" ]; then
  mkdir -p "$work/debs" "$work/etcd" "$work/nats"
  (cd "$work/debs" && apt-get download etcd-server etcd-client nats-server >/dev/null 2>&1) \
    || { log "apt-get download etcd-server etcd-client nats-server failed"; exit 1; }
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/debs/root"; done
  cp "$work/debs/root/usr/bin/etcd" "$work/debs/root/usr/bin/etcdctl" "$work/etcd/"
  cp "$work/debs/root/usr/sbin/nats-server" "$work/nats/"
  # The official images' paths, so that compose files work with either.
  printf 'FROM %s\nCOPY etcd etcdctl /usr/local/bin/\nCMD ["/usr/local/bin/etcd"]\n' \
    "$base_tag" >"$work/etcd/Dockerfile"
  printf 'FROM %s\nCOPY nats-server /usr/local/bin/\nENTRYPOINT ["/usr/local/bin/nats-server"]\n' \
    "$base_tag" >"$work/nats/Dockerfile"
  docker build -q "${labels[@]}" -t "$services-etcd:local" "$work/etcd" >/dev/null
  docker build -q "${labels[@]}" -t "$services-nats:local" "$work/nats" >/dev/null
  log "$services-etcd:local and $services-nats:local built from Debian's packages"
fi
