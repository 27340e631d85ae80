#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need on a Debian 12 machine, and gives
# Nix a config that works as root without a daemon and without network substituters.
# Idempotent: safe to run before every test run.
set -euo pipefail

# nginx: the benchmark's baseline for serving a binary cache as static files (P7).
# docker-registry, skopeo: the registry baseline of the cold-start figures (P11, P12; e2e image_baseline).
# e2fsprogs, mount: the benchmark's own journaled disk (mkfs.ext4, losetup; xtask/src/bench_disk.rs).
need=(containerd runc nix-bin busybox-static bash-static protobuf-compiler git iproute2 util-linux nginx docker-registry skopeo e2fsprogs mount)
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

# The SBOM validators the test suite runs (scripts/validate-sbom.py): spdx-tools and
# cyclonedx-python-lib with its JSON schema validation, from the configured package index.
# And prometheus_client, whose text-format parser reads the node agent's metrics (e2e node_agent).
if ! python3 -c 'import spdx_tools.spdx.validation.document_validator, cyclonedx.validation.json, jsonschema, prometheus_client.parser' 2>/dev/null; then
  echo "setup: installing the SBOM validators (spdx-tools, cyclonedx-python-lib) and prometheus_client" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  validators=('spdx-tools>=0.8' 'cyclonedx-python-lib[json-validation]>=8' 'prometheus-client>=0.20')
  # Debian's own python3 refuses installs outside a venv (PEP 668); a pyenv/venv python does not.
  python3 -m pip install --quiet "${validators[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "${validators[@]}"
fi

# Garage, the S3-compatible object store the S3 tests and benchmarks run against (real S3, not
# a double), built once per machine from crates.io (about 8 minutes on 2 cores) into a cache
# outside the checkout, so later runs and other clones (CI's) find it; the checkout's
# .work/tools/bin/garage links to it. Only the features a single-node test cluster needs.
GARAGE_VERSION=2.5.0
machine_tools="${IMAGELESS_TOOLS_CACHE:-/var/cache/imageless/tools}/garage-$GARAGE_VERSION"
tools="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.work/tools"
if ! "$machine_tools/bin/garage" --version 2>/dev/null | grep -q ":$GARAGE_VERSION "; then
  echo "setup: building garage $GARAGE_VERSION into $machine_tools (once per machine)" >&2
  cargo install --quiet --locked garage --version "$GARAGE_VERSION" \
    --no-default-features --features bundled-libs,lmdb,sqlite --root "$machine_tools"
fi
mkdir -p "$tools/bin"
ln -sfn "$machine_tools/bin/garage" "$tools/bin/garage"
