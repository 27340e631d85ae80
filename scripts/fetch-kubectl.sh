#!/usr/bin/env bash
# Unpacks Debian bookworm's kubernetes-client (kubectl 1.20, with its old built-in kustomize) into
# <repo>/.work/kubernetes-client/ with `dpkg-deb -x`, not installed: the test that deploy/ renders
# with the oldest kubectl we support runs it from there. (Installing the package can clash with a
# kubectl from another package.) Uses the machine's own apt sources. Idempotent.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$repo_root/.work/kubernetes-client"
if [[ -x "$dest/usr/bin/kubectl" ]]; then
  echo "fetch-kubectl: already at $dest" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download kubernetes-client >/dev/null)
mkdir -p "$dest.partial"
dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$dest.partial"
mv "$dest.partial" "$dest"
"$dest/usr/bin/kubectl" version --client 2>/dev/null | head -1 >&2 || true
