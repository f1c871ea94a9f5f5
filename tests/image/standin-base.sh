#!/usr/bin/env bash
# A stand-in for python:3.11-slim where no image registry can be reached: Debian bookworm (the
# release the official image is built on) with its python3.11, made with debootstrap from Debian's
# packages and imported under the same tag, so the project's Dockerfile builds as it is.
#
# It carries this machine's CA certificates (/usr/local/share/ca-certificates) and pip's cert
# setting, so pip inside the build reaches the package index the way pip on this machine does.
# The root filesystem is cached as a tarball keyed by this script and those certificates
# (TWITCH_CDS_IMAGE_CACHE, default /var/cache/twitch-cds): a later run only imports it.
#
# Usage: standin-base.sh [TAG]   (root; needs debootstrap and a running Docker engine)
set -euo pipefail
tag=${1:-python:3.11-slim}
cache=${TWITCH_CDS_IMAGE_CACHE:-/var/cache/twitch-cds}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# debootstrap resolves dependencies only in part, and not through Provides: python3.11-venv needs
# python3.11-distutils, which python3-distutils provides.
packages=python3.11,python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl,ca-certificates,passwd

certs=(/usr/local/share/ca-certificates/*.crt)
[ -e "${certs[0]}" ] || certs=()
key=$( { cat "$0"; [ ${#certs[@]} -eq 0 ] || cat "${certs[@]}"; } | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "org.twitch-cds.standin"}}' "$tag" 2>/dev/null)" = "$key" ]; then
  echo "stand-in $tag ($key) already loaded"
  exit 0
fi
tarball=$cache/standin-python3.11-bookworm-$key.tar
if [ ! -s "$tarball" ]; then
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log"; exit 1; }
  rm -f "$root.log"
  if [ ${#certs[@]} -gt 0 ]; then
    cp "${certs[@]}" "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
  fi
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
  # The official image's interpreter is /usr/local/bin/python (the Dockerfile and HEALTHCHECK call `python`).
  ln -s /usr/bin/python3.11 "$root/usr/local/bin/python"
  ln -s /usr/bin/python3.11 "$root/usr/local/bin/python3"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
  tar --numeric-owner -C "$root" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.twitch-cds.standin=$key" \
  --change 'CMD ["python3"]' \
  "$tarball" "$tag" >/dev/null
echo "stand-in $tag ($key) imported from $tarball"
