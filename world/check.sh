#!/usr/bin/env bash
# Check a hub built by world/build.sh against its world.json:
#   - every generation's manifest.lock on the hub's git branch equals the one in
#     world.json (same JSON), and metadata.json's live generation is the last one;
#   - every lock validates against Flox's schemas (when python's jsonschema and the
#     schema files are available: FLOX_SCHEMAS, default ../shared/fixtures/flox-schemas beside the repository);
#   - every store path of world.json realizes from the hub's signed cache into an
#     empty Nix store, and the packages contain what they should;
#   - custom-catalog packages' private paths are not in the public cache and realize
#     from their catalog's cache with the catalog's key.
#
#   world/check.sh HUB_ROOT
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 HUB_ROOT" >&2; exit 2; }
hub_root=$(realpath "$1")
world_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "world check: $*" >&2; exit 1; }
[[ -f $hub_root/world.json ]] || die "$hub_root/world.json is missing (run world/build.sh first)"
[[ -f $hub_root/cache-key.pub ]] || die "$hub_root/cache-key.pub is missing"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/world-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- hub git branches and lock schemas ---------------------------------------
FLOX_SCHEMAS=${FLOX_SCHEMAS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/fixtures/flox-schemas} \
python3 - "$hub_root" <<'EOF'
import json, os, pathlib, subprocess, sys

hub = pathlib.Path(sys.argv[1])
world = json.loads((hub / "world.json").read_text())
failures = []

def git_show(owner, branch, path):
    repo = hub / "git" / owner / "floxmeta"
    r = subprocess.run(["git", "--git-dir", str(repo), "show", f"refs/heads/{branch}:{path}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        failures.append(f"{owner}/{branch}: git show {path}: {r.stderr.strip()}")
        return None
    return r.stdout

validators = None
schemas = pathlib.Path(os.environ["FLOX_SCHEMAS"])
try:
    import jsonschema
    lock_schema = json.loads((schemas / "lockfile-v1.schema.json").read_text())
    manifest_schema = json.loads((schemas / "manifest-v1.schema.json").read_text())
    # The lockfile schema embeds the manifest schema with $refs that point into the
    # wrong $defs: check the manifest against its own schema instead.
    lock_schema["$defs"]["Manifest"] = {}
    validators = (jsonschema.Draft202012Validator(lock_schema),
                  jsonschema.Draft202012Validator(manifest_schema))
except (ImportError, OSError) as e:
    print(f"world check: skipping schema validation ({e})", file=sys.stderr)

for ref, env in sorted(world["environments"].items()):
    meta = git_show(env["owner"], env["name"], "metadata.json")
    if meta is not None:
        history = json.loads(meta).get("history", [])
        live = history[-1]["current_generation"] if history else None
        if live != str(env["live_generation"]):
            failures.append(f"{ref}: live generation on the hub is {live}, world.json says {env['live_generation']}")
    for gen, g in sorted(env["generations"].items()):
        expected = json.loads((hub / g["manifest_lock"]).read_text())
        got = git_show(env["owner"], env["name"], f"{gen}/env/manifest.lock")
        if got is not None and json.loads(got) != expected:
            failures.append(f"{ref}: generation {gen}: manifest.lock on the hub differs from {g['manifest_lock']}")
        lock_paths = {p for pkg in expected["packages"] for p in pkg["outputs"].values()}
        listed = {p for pkg in g["packages"] for p in pkg["store_paths"].values()}
        if lock_paths != listed:
            failures.append(f"{ref}: generation {gen}: world.json store paths differ from the lock's")
        if not lock_paths <= set(g["closure"]):
            failures.append(f"{ref}: generation {gen}: closure misses some of the lock's paths")
        if validators:
            def describe(err):
                where = "/".join(str(p) for p in err.absolute_path) or "(top)"
                return f"{where}: {err.message[:200]}"
            errors = [describe(e) for e in validators[0].iter_errors(expected)]
            best = jsonschema.exceptions.best_match(validators[1].iter_errors(expected["manifest"]))
            if best is not None:
                errors.append("manifest/" + describe(best))
            if errors:
                failures.append(f"{ref}: generation {gen}: lock does not match Flox's schema: {errors[:3]}")

if failures:
    sys.exit("world check: " + "\n  ".join(["hub does not match world.json:"] + failures))
EOF

# --- the signed cache ---------------------------------------------------------
mapfile -t paths < <(python3 -c 'import json,sys; [print(p) for p in json.load(open(sys.argv[1]))["all_store_paths"]]' "$hub_root/world.json")
[[ ${#paths[@]} -gt 0 ]] || die "world.json lists no store paths"
# A private narinfo cache: Nix must not answer from an earlier lookup.
XDG_CACHE_HOME=$tmp/xdg nix-store --store "$tmp/store" --realise "${paths[@]}" \
    --option substituters "file://$hub_root/cache" \
    --option trusted-public-keys "$(<"$hub_root/cache-key.pub")" \
    --option require-sigs true \
    >/dev/null 2>"$tmp/realise.log" \
    || { cat "$tmp/realise.log" >&2; die "the hub's cache cannot provide every store path of world.json"; }

# Custom-catalog packages: their private paths are in no public narinfo, and realize from their
# catalog's cache alone with the catalog's key (the cache holds the whole closure).
while IFS=$'\t' read -r catalog key; do
    mapfile -t private < <(python3 -c 'import json,sys; [print(p) for pkg in json.load(open(sys.argv[1]))["catalogs"][sys.argv[2]]["packages"].values() for p in pkg["private_paths"]]' "$hub_root/world.json" "$catalog")
    [[ ${#private[@]} -gt 0 ]] || die "catalog $catalog has no private paths"
    for p in "${private[@]}"; do
        h=${p#/nix/store/}
        [[ ! -e $hub_root/cache/${h:0:32}.narinfo ]] || die "$p of catalog $catalog is in the public cache"
    done
    XDG_CACHE_HOME=$tmp/xdg nix-store --store "$tmp/store" --realise "${private[@]}" \
        --option substituters "file://$hub_root/catalogs/$catalog/cache" \
        --option trusted-public-keys "$key" \
        --option require-sigs true \
        >/dev/null 2>"$tmp/realise-$catalog.log" \
        || { cat "$tmp/realise-$catalog.log" >&2; die "catalog $catalog's cache cannot provide its packages' paths"; }
    [[ $(<"$hub_root/catalogs/$catalog/key.pub") == "$key" ]] || die "catalogs/$catalog/key.pub differs from world.json"
done < <(python3 -c 'import json,sys; [print(c, v["public_key"], sep="\t") for c, v in sorted(json.load(open(sys.argv[1]))["catalogs"].items())]' "$hub_root/world.json")

# Spot checks on the realized packages (in the temp store, read as files).
pkg_path() {  # ATTR [OUTPUT]
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packages"][sys.argv[2]]["store_paths"][sys.argv[3]])' \
        "$hub_root/world.json" "$1" "${2:-out}"
}
in_store() { echo "$tmp/store$1"; }
grep -q 'hello 2.10' "$(in_store "$(pkg_path hello_2_10)")/bin/hello" || die "hello 2.10 prints the wrong text"
grep -q 'hello 2.12' "$(in_store "$(pkg_path hello_2_12)")/bin/hello" || die "hello 2.12 prints the wrong text"
[[ -f $(in_store "$(pkg_path greet man)")/share/man/man1/greet.1 ]] || die "greet's man output lacks greet.1"
grep -q "$(pkg_path libgreeting)" "$(in_store "$(pkg_path greeter)")/bin/greeter" || die "greeter does not reference libgreeting"
grep -qx "$(pkg_path devlib)" "$(in_store "$(pkg_path devtool)")/nix-support/propagated-build-inputs" \
    || die "devtool does not propagate devlib"
[[ -f $(in_store "$(pkg_path devlib)")/include/devlib.h && -f $(in_store "$(pkg_path devlib)")/lib/pkgconfig/devlib.pc ]] \
    || die "devlib lacks its header or pkg-config file"
cmp -s "$(in_store "$(pkg_path bash)")/bin/bash" "${WORLD_BASH:-/bin/bash-static}" || echo "world check: note: bin/bash differs from ${WORLD_BASH:-/bin/bash-static}" >&2
blue=$(in_store "$(pkg_path whoami_blue)")/bin/whoami-pkg
green=$(in_store "$(pkg_path whoami_green)")/bin/whoami-pkg
cmp -s "$blue" "$green" && die "the two whoami-pkg files must differ"
grep -q 'hello-private 1.0 (acme)' "$(in_store "$(pkg_path hello_private)")/bin/hello-private" \
    || die "hello-private prints the wrong text"

# flox/large: a realistic size, compressed NARs, and the tools tests look around with.
python3 - "$hub_root" <<'EOF'
import json, pathlib, sys
hub = pathlib.Path(sys.argv[1])
closure = json.loads((hub / "world.json").read_text())["environments"]["flox/large"]["generations"]["1"]["closure"]
nar_size = 0
for p in closure:
    text = (hub / "cache" / f"{pathlib.Path(p).name[:32]}.narinfo").read_text()
    info = dict(line.split(": ", 1) for line in text.splitlines())
    nar_size += int(info["NarSize"])
    if info["Compression"] not in ("xz", "zstd"):
        sys.exit(f"world check: {p} is stored with compression {info['Compression']}, expected xz or zstd")
if len(closure) < 300 or nar_size < 200_000_000:
    sys.exit(f"world check: flox/large has {len(closure)} store paths, {nar_size} bytes; needs >= 300 and >= 200 MB")
print(f"world check: flox/large: {len(closure)} store paths, {nar_size / 1e6:.0f} MB unpacked", file=sys.stderr)
# Generation 2 is the update case (P12): it must share about 90 % of its paths with generation 1.
gens = json.loads((hub / "world.json").read_text())["environments"]["flox/large"]["generations"]
if "2" not in gens:
    sys.exit("world check: flox/large has no generation 2")
second = set(gens["2"]["closure"])
shared = len(second & set(closure)) / len(second)
if len(second) < 300 or not 0.85 <= shared <= 0.95:
    sys.exit(f"world check: flox/large:2 has {len(second)} paths, {shared:.0%} shared with generation 1; needs >= 300 and 85-95 %")
print(f"world check: flox/large:2: {len(second)} store paths, {shared:.1%} shared with generation 1", file=sys.stderr)
EOF
for app in large_app large_app_1_1; do
    [[ $(wc -l <"$(in_store "$(pkg_path $app)")/lib/large-app/libraries") -eq 250 ]] || die "$app does not list 250 libraries"
done
for tool in cat wc sleep; do
    [[ -L $(in_store "$(pkg_path large_coreutils)")/bin/$tool ]] || die "coreutils lacks bin/$tool"
done

# flox/xlarge: the biggest environment (a thousand store paths, 1.5 GB and more), compressed
# NARs, a stack of its own (only busybox, bash and coreutils are flox/large's too).
python3 - "$hub_root" <<'EOF'
import json, pathlib, sys
hub = pathlib.Path(sys.argv[1])
envs = json.loads((hub / "world.json").read_text())["environments"]
if "flox/xlarge" not in envs:
    sys.exit("world check: flox/xlarge is missing")
closure = envs["flox/xlarge"]["generations"]["1"]["closure"]
nar_size = file_size = 0
for p in closure:
    text = (hub / "cache" / f"{pathlib.Path(p).name[:32]}.narinfo").read_text()
    info = dict(line.split(": ", 1) for line in text.splitlines())
    nar_size += int(info["NarSize"])
    file_size += int(info["FileSize"])
    if info["Compression"] not in ("xz", "zstd"):
        sys.exit(f"world check: {p} is stored with compression {info['Compression']}, expected xz or zstd")
if len(closure) < 1000 or nar_size < 1_500_000_000:
    sys.exit(f"world check: flox/xlarge has {len(closure)} store paths, {nar_size} bytes; needs >= 1000 and >= 1.5 GB")
large = {p for g in envs["flox/large"]["generations"].values() for p in g["closure"]}
shared = sorted(p.split("-", 1)[1] for p in set(closure) & large)
if len(shared) > 3:
    sys.exit(f"world check: flox/xlarge shares {len(shared)} store paths with flox/large, "
             f"expected busybox, bash and coreutils only: {shared[:10]}")
print(f"world check: flox/xlarge: {len(closure)} store paths, {nar_size / 1e6:.0f} MB unpacked, "
      f"{file_size / 1e6:.0f} MB in the cache", file=sys.stderr)
EOF
xlibs=$(in_store "$(pkg_path xlarge_app)")/lib/xlarge-app/libraries
[[ $(wc -l <"$xlibs") -eq 1000 ]] || die "xlarge_app does not list 1000 libraries"
[[ $(grep -c -- '-libxlarge[0-9]\{4\}-1\.0$' "$xlibs") -eq 1000 ]] || die "xlarge_app lists something else than 1000 libxlarge libraries"
while read -r lib; do
    [[ -f $(in_store "$lib")/nix-support/linked-libraries ]] || die "xlarge_app's library $lib was not realized"
done <"$xlibs"
grep -q "echo \"xlarge-app: .*/lib/xlarge-app/libraries) libraries\"" "$(in_store "$(pkg_path xlarge_app)")/bin/xlarge-app" \
    || die "xlarge-app prints the wrong text"
[[ $(wc -l <"$(in_store "$(pkg_path xlarge_pydata)")/nix-support/site-packages") -eq 40 ]] \
    || die "xlarge_pydata does not list 40 packages"

echo "world check: ok (${#paths[@]} store paths realized from $hub_root/cache)"
