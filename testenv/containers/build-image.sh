#!/usr/bin/env bash
# Builds the controller's OCI image with podman from a local `iter8` binary, with nothing to
# pull (Containerfile: FROM scratch + the binary + the libraries `ldd` lists + the host's CA
# bundle), tags it IMAGE and prints its ID. Debug information is stripped from the copy (a
# debug build: 330 MB -> 75 MB). The previous image of that tag is removed unless a container
# still uses it.
#
# Usage: testenv/containers/build-image.sh BINARY [IMAGE]   (IMAGE: localhost/iter8-rs/iter8:local)
# podman reads testenv/containers/containers.conf (runc, cgroupfs) unless CONTAINERS_CONF is set.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "build-image.sh: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 BINARY [IMAGE]"
binary=$1 image=${2:-localhost/iter8-rs/iter8:local}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

for tool in podman runc; do
  command -v "$tool" >/dev/null ||
    die "$tool is not installed: run make setup (testenv/setup.sh installs podman and runc from Debian's packages)"
done
[ -f "$binary" ] && [ -x "$binary" ] || die "$binary is not an executable file (build it first: cargo build -p iter8)"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin"
if command -v strip >/dev/null; then
  strip --strip-debug -o "$ctx/rootfs/usr/local/bin/iter8" "$binary"
else
  cp "$binary" "$ctx/rootfs/usr/local/bin/iter8"
fi
chmod 0755 "$ctx/rootfs/usr/local/bin/iter8"

# Every shared library the binary links, and the dynamic loader, copied (links followed) to
# the path ldd names: the loader finds them there as on the host. A static binary has none.
if libs=$(LC_ALL=C ldd "$binary" 2>&1); then
  if grep -q 'not found' <<<"$libs"; then
    die "$binary links libraries this machine lacks:"$'\n'"$libs"
  fi
  while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
    chmod 0755 "$ctx/rootfs$lib"
  done < <(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$libs" | sort -u)
elif ! grep -qE 'not a dynamic executable|statically linked' <<<"$libs"; then
  die "ldd $binary failed: $libs"
fi

# The CA bundle, as distroless has it: the controller's HTTPS clients (automated analysis's
# Prometheus queries) trust the system's roots. The API server is trusted through the pod's
# ServiceAccount ca.crt instead.
bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || die "no CA bundle at $bundle (Debian package ca-certificates)"
mkdir -p "$ctx/rootfs/etc/ssl/certs"
cp -L "$bundle" "$ctx/rootfs$bundle"
chmod 0644 "$ctx/rootfs$bundle"

old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
podman build --quiet --iidfile "$ctx/iid" --tag "$image" --file "$here/Containerfile" "$ctx" >/dev/null ||
  die "podman build failed"
new=$(sed 's/^sha256://' "$ctx/iid")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  podman rmi "$old" >/dev/null 2>&1 || true
fi
echo "$new"
