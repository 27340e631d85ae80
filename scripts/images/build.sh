#!/usr/bin/env bash
# Builds the local OCI image archives the demo and the e2e tests import with
# `ctr -n k8s.io images import` (there is no registry on these machines):
#   flox-empty.tar  docker.io/flox/empty:1.0.0      one layer: /tmp, /etc/passwd, /etc/group only
#   busybox.tar     docker.io/library/busybox:local busybox-static with applet symlinks in /bin
#   pause.tar       docker.io/library/pause:local   busybox `sh` that sleeps until TERM/INT (sandbox image)
# Usage: scripts/images/build.sh [OUT_DIR]   (default <repo>/.work/images)
# Output is byte-for-byte reproducible (sorted, mtime 0, numeric owners), so re-running is cheap
# and importing twice is a no-op for containerd.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$repo_root/.work/images}
busybox=${BUSYBOX:-/bin/busybox}
[[ -x "$busybox" ]] || { echo "images: $busybox missing (install busybox-static)" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Deterministic layer tar of a directory tree.
layer_tar() { # SRC_DIR OUT_TAR
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$1" -cf "$2" .
}

base_files() { # ROOT: the minimum a container runtime and `id` expect
  mkdir -p "$1/tmp" "$1/etc" "$1/root"
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$1/etc/group"
}

# build_image OUT_NAME IMAGE_REF LAYER_DIR CONFIG_JSON_FRAGMENT
# CONFIG_JSON_FRAGMENT is the image config's "config" object (Env, Cmd, ...).
build_image() {
  local name=$1 ref=$2 root=$3 cfg=$4
  local lay="$work/$name" blobs="$work/$name/blobs/sha256"
  mkdir -p "$blobs"
  layer_tar "$root" "$work/$name.layer.tar"
  local ld; ld=$(sha "$work/$name.layer.tar")
  mv "$work/$name.layer.tar" "$blobs/$ld"
  local ls; ls=$(size "$blobs/$ld")

  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$cfg" "$ld" >"$work/config.json"
  local cd; cd=$(sha "$work/config.json")
  mv "$work/config.json" "$blobs/$cd"
  local cs; cs=$(size "$blobs/$cd")

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cd" "$cs" "$ld" "$ls" >"$work/manifest.json"
  local md; md=$(sha "$work/manifest.json")
  local ms; ms=$(size "$work/manifest.json")
  mv "$work/manifest.json" "$blobs/$md"

  local tag=${ref##*:}
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$md" "$ms" "$ref" "$tag" >"$lay/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
  layer_tar "$lay" "$work/$name.tar"
  mv "$work/$name.tar" "$out/$name.tar"
  echo "images: $out/$name.tar  $ref" >&2
}

# flox/empty: nothing to run; the flox runtime supplies the environment and the activator.
empty="$work/root-empty"
base_files "$empty"
build_image flox-empty docker.io/flox/empty:1.0.0 "$empty" \
  '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}'

# busybox: one static binary, applets as relative symlinks.
bb="$work/root-busybox"
base_files "$bb"
mkdir -p "$bb/bin"
cp "$busybox" "$bb/bin/busybox"
for applet in $("$busybox" --list); do
  [[ "$applet" == busybox ]] || ln -s busybox "$bb/bin/$applet"
done
build_image busybox docker.io/library/busybox:local "$bb" \
  '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}'

# pause: same rootfs; PID 1 ignores signals without handlers, so trap TERM/INT to stop promptly.
build_image pause docker.io/library/pause:local "$bb" \
  '{"Env":["PATH=/bin"],"Entrypoint":["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]}'
