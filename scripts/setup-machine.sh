#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need on a Debian 12 machine, and gives
# Nix a config that works as root without a daemon and without network substituters.
# Idempotent: safe to run before every test run.
set -euo pipefail

# nginx: the benchmark's baseline for serving a binary cache as static files (P7).
need=(containerd runc nix-bin busybox-static bash-static protobuf-compiler git iproute2 util-linux nginx)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The machine's containerd service must not grab the default socket paths our tests use; we
# only ever start private containerds, so make sure a package-started one is not running.
if command -v systemctl >/dev/null && systemctl is-active -q containerd 2>/dev/null; then
  systemctl stop containerd || true
fi

mkdir -p /etc/nix /nix/var/nix/gcroots
if ! grep -q '^# imageless-managed' /etc/nix/nix.conf 2>/dev/null; then
  cat >/etc/nix/nix.conf <<'NIXCONF'
# imageless-managed: root without nix-daemon, no network substituters by default
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
NIXCONF
fi
