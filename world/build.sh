#!/usr/bin/env bash
# Build the test world's packages with the host's Nix (no nixpkgs: Debian's static
# busybox and bash are the only inputs), lock the environments of world/envs against
# them, and publish everything into a hub directory with `imageless hub`.
#
#   world/build.sh HUB_ROOT [IMAGELESS_BIN]
#
# HUB_ROOT is owned by this script: when the world changed it is rebuilt from
# scratch (in HUB_ROOT.new, then swapped in), so generation numbers on the hub
# always equal the directory names under world/envs. Unchanged inputs (world/**,
# the busybox and bash binaries) => "world: up to date", nothing else happens.
#
# Environment: WORLD_BUSYBOX (default /bin/busybox), WORLD_BASH (default
# /bin/bash-static), WORLD_KEEP_STORE=1 keeps the built paths in the host store.
set -euo pipefail

usage() { echo "usage: $0 HUB_ROOT [IMAGELESS_BIN]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 && -n $1 ]] || usage

world_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hub_root=$(realpath -m "$1")
imageless=${2:-imageless}
busybox_bin=${WORLD_BUSYBOX:-/bin/busybox}
bash_bin=${WORLD_BASH:-/bin/bash-static}
system=x86_64-linux

die() { echo "world: $*" >&2; exit 1; }
log() { echo "world: $*" >&2; }

# A relative IMAGELESS_BIN (target/debug/imageless) must survive the cd's below.
[[ $imageless == */* ]] && imageless=$(realpath -m "$imageless")
for f in "$busybox_bin" "$bash_bin"; do
    [[ -x $f ]] || die "'$f' is missing; install busybox-static and bash-static (scripts/setup-machine.sh)"
done
for tool in python3 flock sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is not on PATH"
done

# The stamp covers every input: the world's files and the two binaries.
stamp=$(
    {
        (cd "$world_dir" && find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum)
        sha256sum <"$busybox_bin"
        sha256sum <"$bash_bin"
    } | sha256sum | cut -d' ' -f1
)

mkdir -p "$(dirname "$hub_root")"
# Two test runs may build the same hub at once: one builds, the other waits and
# then finds the stamp up to date.
exec 9>"$hub_root.lock"
flock 9

if [[ -f $hub_root/world.stamp && $(<"$hub_root/world.stamp") == "$stamp" ]]; then
    echo "world: up to date"
    exit 0
fi

if [[ $imageless == */* ]]; then
    [[ -x $imageless ]] || die "IMAGELESS_BIN '$imageless' is not an executable file (cargo build -p imageless)"
else
    command -v "$imageless" >/dev/null || die "IMAGELESS_BIN '$imageless' is not on PATH; pass its path, e.g. target/debug/imageless"
fi
for tool in nix-store nix-instantiate nix git; do
    command -v "$tool" >/dev/null || die "'$tool' is not on PATH"
done

started=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/world-build.XXXXXX")
stage=$hub_root.new
cleanup() { rm -rf "$work" "$stage"; }
trap cleanup EXIT
# Temporary indirect GC roots: they protect the build from a concurrent GC until
# everything is published, and are gone (with $work) before the paths are deleted.
roots=$work/roots
mkdir -p "$roots"

# --- 1. import busybox and bash as content-addressed store directories --------
mkdir -p "$work/src/busybox-static/bin" "$work/src/bash-static/bin"
cp "$busybox_bin" "$work/src/busybox-static/bin/busybox"
ln -s busybox "$work/src/busybox-static/bin/sh"
cp "$bash_bin" "$work/src/bash-static/bin/bash"
chmod 555 "$work/src/busybox-static/bin/busybox" "$work/src/bash-static/bin/bash"
busybox_path=$(nix-store --add "$work/src/busybox-static")
bash_path=$(nix-store --add "$work/src/bash-static")
nix-store --realise "$busybox_path" "$bash_path" --add-root "$roots/src" --indirect >/dev/null

# --- 2. evaluate and build the packages ---------------------------------------
# --read-write-mode: evaluating drvPath must write the .drv files to the store.
nix-instantiate --eval --strict --json --read-write-mode \
    --argstr busybox "$busybox_path" --argstr bash "$bash_path" --argstr system "$system" \
    -E '{ busybox, bash, system }:
        let pkgs = import '"$world_dir"'/packages.nix { inherit busybox bash system; };
        in builtins.mapAttrs (_: d: {
             inherit (d) name drvPath;
             outputs = builtins.listToAttrs
               (map (o: { name = o; value = d.${o}.outPath; }) d.outputs);
           }) pkgs' >"$work/built.json"
mapfile -t drvs < <(python3 -c 'import json,sys; [print(v["drvPath"]) for v in json.load(open(sys.argv[1])).values()]' "$work/built.json")
nix-store --realise --max-jobs "$(nproc)" "${drvs[@]}" --add-root "$roots/out" --indirect >/dev/null 2>"$work/build.log" \
    || { cat "$work/build.log" >&2; die "building the packages failed"; }

# --- 3. lock the environments -------------------------------------------------
python3 "$world_dir/lock.py" "$world_dir" "$work/built.json" "$work/out"

# --- 4. publish into a fresh hub ----------------------------------------------
rm -rf "$stage"
"$imageless" hub init --root "$stage" >/dev/null
while IFS=$'\t' read -r env gen visibility lock manifest; do
    args=(hub publish --root "$stage" "$env" --lock "$work/out/$lock" --manifest "$work/out/$manifest")
    [[ $visibility == private ]] && args+=(--private)
    published=$("$imageless" "${args[@]}") || die "imageless ${args[*]} failed"
    published=$(tail -n1 <<<"$published" | tr -d '[:space:]')
    [[ $published == "$gen" ]] || die "publishing $env gave generation '$published', expected $gen (is $stage fresh?)"
    log "published $env generation $gen ($visibility)"
done <"$work/out/plan.tsv"
while IFS=$'\t' read -r owner handle; do
    "$imageless" hub grant --root "$stage" "$owner" "$handle" >/dev/null
    log "granted $owner to $handle"
done <"$work/out/grants.tsv"

# Custom-catalog packages, after the environments (whose publish leaves them out of the public
# cache, and puts their public dependencies such as busybox in it): each into its catalog's
# store (the hub's per-catalog cache), signed with a key generated for the catalog here.
while IFS=$'\t' read -r catalog name outputs; do
    key=$work/keys/$catalog-1.sec
    if [[ ! -f $key ]]; then
        mkdir -p "$work/keys"
        nix-store --generate-binary-cache-key "$catalog-1" "$key" "$work/keys/$catalog-1.pub"
    fi
    args=(hub publish-package --root "$stage" --catalog "$catalog" --name "$name" --key "$key")
    IFS=, read -ra outs <<<"$outputs"
    for o in "${outs[@]}"; do args+=(--output "$o"); done
    "$imageless" "${args[@]}" >/dev/null || die "imageless ${args[*]} failed"
    log "published $catalog/$name into catalog $catalog's store"
done <"$work/out/catalog_packages.tsv"

cp -r "$work/out/world" "$stage/world"
cp "$work/out/world.json" "$stage/world.json"
python3 "$world_dir/lock.py" --finish "$stage" "$stamp" "$stage/cache-key.pub"

# --- 5. verify the hub, then swap it in ---------------------------------------
"$world_dir/check.sh" "$stage" >&2
echo "$stamp" >"$stage/world.stamp"
if [[ -e $hub_root ]]; then
    mv "$hub_root" "$hub_root.old.$$"
fi
mv "$stage" "$hub_root"
rm -rf "$hub_root.old.$$"

# --- 6. drop the world from the host store ------------------------------------
# Nodes must realize the packages from the hub's cache, as they would from FloxHub's.
if [[ ${WORLD_KEEP_STORE:-0} != 1 ]]; then
    mapfile -t doomed < <(
        nix-store --query --requisites "${drvs[@]}" "$busybox_path" "$bash_path"
        python3 -c 'import json,sys; w=json.load(open(sys.argv[1])); [print(p) for p in w["all_store_paths"] + w["catalog_store_paths"]]' "$hub_root/world.json"
    )
    rm -rf "$roots"
    mapfile -t doomed < <(printf '%s\n' "${doomed[@]}" | sort -u)
    if ! nix-store --delete "${doomed[@]}" >/dev/null 2>"$work/delete.log"; then
        # Something else (e.g. a node's GC root) keeps some paths alive: delete the
        # rest one by one; a few passes let referrers go before their references.
        for _pass in 1 2 3; do
            left=()
            for p in "${doomed[@]}"; do
                [[ -e $p ]] || continue
                nix-store --delete "$p" >/dev/null 2>&1 || left+=("$p")
            done
            doomed=("${left[@]}")
        done
        log "kept ${#doomed[@]} store paths that are still in use on this host"
    fi
fi

log "built and published in $((SECONDS - started))s into $hub_root"
