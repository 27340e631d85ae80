#!/usr/bin/env bash
# Downloads the containerd versions the e2e suite runs on besides the system's 1.6.20:
#   1.7.24 from Debian trixie and 2.1.9 from Debian sid, unpacked (not installed) into
#   <repo>/.work/containerd/<version>/ with `dpkg-deb -x`.
# The apt list is private (its own sources file, state and cache under .work/apt) so the
# machine's apt configuration is untouched; its mirror URI is read from the machine's own apt
# sources at run time, so no host name lives in this repository.
# Idempotent: a version whose binaries are already unpacked is skipped.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="$repo_root/.work"
dest_root="$work/containerd"
apt_dir="$work/apt"

# version -> Debian suite that carries it
declare -A suite_of=([1.7.24]=trixie [2.1.9]=sid)
wanted=("$@")
((${#wanted[@]})) || wanted=(1.7.24 2.1.9)

todo=()
for v in "${wanted[@]}"; do
  [[ -n "${suite_of[$v]:-}" ]] || { echo "fetch-containerd: unknown version '$v' (accepted: ${!suite_of[*]})" >&2; exit 2; }
  if [[ -x "$dest_root/$v/usr/bin/containerd" && -x "$dest_root/$v/usr/bin/containerd-shim-runc-v2" ]]; then
    echo "fetch-containerd: $v already at $dest_root/$v" >&2
  else
    todo+=("$v")
  fi
done
((${#todo[@]})) || exit 0

# The first Debian archive URI configured on this machine (deb822 .sources or one-line .list),
# skipping the security archive, which carries no containerd for other suites.
mirror_uri() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    case "$f" in
      *.sources)
        awk 'tolower($1)=="uris:" { for (i = 2; i <= NF; i++) print $i }' "$f" ;;
      *)
        awk '$1=="deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i ~ /:\/\//) { print $i; break } }' "$f" ;;
    esac
  done | grep -v -- '-security' | grep -E '/debian/?$' | head -n1
}
uri=$(mirror_uri)
[[ -n "$uri" ]] || { echo "fetch-containerd: no Debian mirror URI found in /etc/apt/sources.list{,.d/*}" >&2; exit 1; }

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$dest_root"
sources="$apt_dir/sources.list"
: >"$sources"
for v in "${todo[@]}"; do
  echo "deb [signed-by=$keyring] ${uri%/} ${suite_of[$v]} main" >>"$sources"
done
sort -u -o "$sources" "$sources"

apt_opts=(
  -o "Dir::Etc::SourceList=$sources"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Dir::State::status=/var/lib/dpkg/status"
  -o "APT::Get::List-Cleanup=0"
  -o "Acquire::Languages=none"
  -o "APT::Sandbox::User=root"
)
echo "fetch-containerd: updating private apt list for ${todo[*]}" >&2
apt-get "${apt_opts[@]}" update -qq

for v in "${todo[@]}"; do
  # Debian's version string for this upstream version (e.g. 1.7.24~ds1-6+b4), from the private list.
  deb_version=$(apt-cache "${apt_opts[@]}" madison containerd | awk -F'|' -v v="$v" '
    { gsub(/ /, "", $2); if (index($2, v "~") == 1 || index($2, v "+") == 1 || index($2, v "-") == 1 || $2 == v) { print $2; exit } }')
  [[ -n "$deb_version" ]] || {
    echo "fetch-containerd: containerd $v not found in ${suite_of[$v]}; versions there:" >&2
    apt-cache "${apt_opts[@]}" madison containerd >&2 || true
    exit 1
  }
  echo "fetch-containerd: downloading containerd=$deb_version" >&2
  (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download -qq "containerd=$deb_version")
  deb=$(ls -1 "$apt_dir/debs"/containerd_"${deb_version//:/%3a}"_*.deb | head -n1)
  tmp=$(mktemp -d "$dest_root/.$v.XXXXXX")
  dpkg-deb -x "$deb" "$tmp"
  rm -rf "${dest_root:?}/$v"
  mv "$tmp" "$dest_root/$v"
  "$dest_root/$v/usr/bin/containerd" --version >&2
done
