#!/usr/bin/env bash
# bootstrap-base.sh [TAG]: makes a Debian 12 (bookworm) base image without a
# registry: debootstrap --variant=minbase from the Debian mirror apt already
# uses, then `docker import`. For hosts that reach Debian's mirror but not
# Docker Hub; the image is tagged TAG (default dsinfer-base:bookworm-minbase),
# never under Debian's own name, since it is not Debian's published image.
# ROOTFS=DIR imports a tree debootstrapped before (the same command) instead.
# Needs root, debootstrap and a running docker daemon. Exit 0 made (or already
# there), 1 failed.
set -euo pipefail
tag=${1:-dsinfer-base:bookworm-minbase}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag exists"
  exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "bootstrap-base: debootstrap needs root" >&2; exit 1; }
if [[ -n ${ROOTFS:-} ]]; then
  root=$ROOTFS
  [[ -x $root/usr/bin/apt-get ]] || { echo "bootstrap-base: $root is not a debootstrapped tree" >&2; exit 1; }
else
  command -v debootstrap >/dev/null || { echo "bootstrap-base: debootstrap not installed (apt-get install debootstrap)" >&2; exit 1; }
  root=$(mktemp -d /tmp/dsi-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
    { tail -5 "$root.log" >&2; rm -f "$root.log"; exit 1; }
  rm -f "$root.log"
fi
# as in Debian's slim images: no apt caches or lists in the layer
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "made $tag"
