#!/usr/bin/env bash
# Build the local base image localhost/timbral-base:bookworm once (cached in buildah's storage).
#
# No image registry is reachable here, so the bento's `FROM python:3.11-slim` cannot be pulled. This makes a
# stand-in from Debian's packages: a debootstrap'ed bookworm (minbase) root filesystem with what the generated
# Dockerfile expects from python:3.11-slim: `python`/`python3` 3.11 and `pip` on PATH (its first RUN step does
# `pip install uv`), pip allowed to install system-wide (no PEP 668 EXTERNALLY-MANAGED marker, like the
# python.org image), groupadd/useradd (the bentoml user), bash, ca-certificates, and apt sources including the
# security suite (the Dockerfile apt-installs build-essential, git, gnupg2), and the host's local CA
# certificates (see below).
#
#   k8s/image/base.sh            build if missing
#   FORCE=1 k8s/image/base.sh    rebuild
# Env: BASE_IMAGE (localhost/timbral-base:bookworm), IMAGE_WORKDIR (/var/tmp/timbral-image),
#      DEBIAN_MIRROR (http://deb.debian.org/debian), SUITE (bookworm),
#      EXTRA_CA_DIR (/usr/local/share/ca-certificates; an empty directory adds none),
#      BUILDAH_STORAGE_DRIVER (default: buildah's own choice, overlay here; vfs where overlay is not allowed).
set -euo pipefail

export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
# buildah 1.28 ignores STORAGE_DRIVER: BUILDAH_STORAGE_DRIVER (e.g. vfs) is passed as --storage-driver
buildah() { command buildah ${BUILDAH_STORAGE_DRIVER:+--storage-driver "$BUILDAH_STORAGE_DRIVER"} "$@"; }
BASE_IMAGE="${BASE_IMAGE:-localhost/timbral-base:bookworm}"
WORKDIR="${IMAGE_WORKDIR:-/var/tmp/timbral-image}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SUITE="${SUITE:-bookworm}"
EXTRA_CA_DIR="${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
PACKAGES="python3,python3-pip,python3-venv,python-is-python3,ca-certificates,passwd,bash"

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "need $tool: apt-get install buildah debootstrap" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "debootstrap and buildah (chroot isolation) need root" >&2; exit 1; }

mkdir -p "$WORKDIR"
# one build at a time (make image and the e2e test may start together); the second one then finds it cached
exec 9>"$WORKDIR/base.lock"
flock 9
if [ -z "${FORCE:-}" ] && buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "base image $BASE_IMAGE is cached (FORCE=1 to rebuild)"
  exit 0
fi

start=$(date +%s)
rootfs="$WORKDIR/rootfs-$SUITE"
ctr=""
remove_rootfs() {
  # debootstrap may leave /proc, /sys or a bind-mounted /dev in a failed root: unmount before deleting, and
  # never cross into another file system
  if [ -d "$rootfs" ]; then
    findmnt -rn -o TARGET | { grep -F "$rootfs/" || true; } | sort -r | while read -r target; do umount -l "$target" || true; done
    rm -rf --one-file-system "$rootfs"
  fi
}
cleanup() {
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  remove_rootfs
}
trap cleanup EXIT
remove_rootfs

echo "debootstrap --variant=minbase $SUITE (+ $PACKAGES) into $rootfs"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$WORKDIR/debootstrap.log" 2>&1 \
  || { tail -30 "$WORKDIR/debootstrap.log" >&2; echo "debootstrap failed (log: $WORKDIR/debootstrap.log)" >&2; exit 1; }

cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
# Security updates on top of the point release, then drop the package caches.
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  sh -c 'apt-get update -qq && apt-get upgrade -y -qq >/dev/null && apt-get clean' >>"$WORKDIR/debootstrap.log" 2>&1 \
  || { tail -30 "$WORKDIR/debootstrap.log" >&2; echo "apt-get upgrade in the root filesystem failed" >&2; exit 1; }
# Trust the host's local CA certificates too (EXTRA_CA_DIR, default /usr/local/share/ca-certificates): where
# egress goes through a TLS-intercepting proxy, pip and uv in the Dockerfile's RUN steps reach PyPI only then.
# SSL_CERT_FILE (set in the image config below) makes uv, which ships its own roots, use the system bundle.
extra_cas=0
for crt in "$EXTRA_CA_DIR"/*.crt; do
  [ -f "$crt" ] || continue
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp "$crt" "$rootfs/usr/local/share/ca-certificates/host-$(basename "$crt")"
  extra_cas=$((extra_cas + 1))
done
if [ "$extra_cas" -gt 0 ]; then
  echo "trusting $extra_cas extra CA certificate(s) from $EXTRA_CA_DIR in the local base"
  chroot "$rootfs" /usr/sbin/update-ca-certificates >>"$WORKDIR/debootstrap.log" 2>&1
fi
# python.org's images let pip install into the system interpreter; Debian marks it externally managed (PEP 668).
# Remove the marker (after the upgrade, which restores it) and tell pip so in /etc/pip.conf, which no package
# owns, so a later apt-get in the Dockerfile cannot bring the refusal back.
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
printf '[global]\nbreak-system-packages = true\n' >"$rootfs/etc/pip.conf"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log "$rootfs"/tmp/*

ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
tar -C "$rootfs" --numeric-owner --xattrs -cf - . | tar -C "$mnt" --numeric-owner --xattrs -xf -
buildah umount "$ctr" >/dev/null
buildah config \
  --env LANG=C.UTF-8 \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd python3 \
  --label org.opencontainers.image.title=timbral-base \
  --label org.opencontainers.image.description="Debian $SUITE minbase + python3 (stand-in for python:3.11-slim)" \
  "$ctr"
old_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE" 2>/dev/null || true)
buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
ctr=""
# a forced rebuild leaves the previous base untagged: drop it unless an image still builds on it
[ -n "$old_id" ] && { buildah rmi "$old_id" >/dev/null 2>&1 || true; }

ctr=$(buildah from "$BASE_IMAGE")
python_version=$(buildah run --isolation chroot "$ctr" python --version 2>&1 || true)
buildah rm "$ctr" >/dev/null
ctr=""
echo "built $BASE_IMAGE ($python_version) in $(( $(date +%s) - start ))s"
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$BASE_IMAGE"
