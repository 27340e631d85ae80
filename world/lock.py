#!/usr/bin/env python3
"""Lock the world's environments against the packages build.sh just built.

    lock.py WORLD_DIR BUILT_JSON OUT_DIR
    lock.py --finish OUT_DIR STAMP CACHE_PUBLIC_KEY_FILE

WORLD_DIR   the world/ directory (envs/, catalog.toml, hub.toml)
BUILT_JSON  {attr: {"name", "drvPath", "outputs": {output: store path}}} for
            every attribute of packages.nix (what build.sh evaluated)
OUT_DIR     receives world/envs/<owner>/<name>/<gen>/{manifest.toml,manifest.lock},
            plan.tsv (one publish per line: owner/name, generation, private,
            lock path, manifest path), catalog_packages.tsv (one
            `hub publish-package` per line: catalog, name, out=PATH[,man=PATH])
            and world.json (without the fields only known after publishing).

A catalog.toml entry whose pkg-path has a catalog prefix (`acme/hello-private`)
is a custom-catalog package: locked as Flox locks one (attr_path without the
catalog, no cache URL), published to its catalog's store, not the public cache.

A lockfile is Flox's lockfile v1: the manifest as JSON plus one catalog entry
per install id for x86_64-linux. Catalog fields that a real catalog would
scrape (rev, dates) are fixed values so the output is reproducible.
"""
import json
import pathlib
import subprocess
import sys
import tomllib

SYSTEM = "x86_64-linux"
# A stand-in nixpkgs revision: 40 hex digits, as the catalog's locked_url has.
REV = "5e1f0a3c9b7d2e4f6a8c0b1d3e5f7a9c1b3d5e7f"
REV_COUNT = 700001
REV_DATE = "2026-01-15T12:00:00Z"
SCRAPE_DATE = "2026-01-16T06:00:00.000000Z"
DEFAULT_PRIORITY = 5


class WorldError(Exception):
    pass


def version_key(version):
    return [int(p) if p.isdigit() else p for p in version.replace("-", ".").split(".")]


def resolve(catalog, install_id, descriptor, where):
    """The catalog attribute for one install descriptor (pkg-path + optional version)."""
    pkg_path = descriptor.get("pkg-path")
    if not pkg_path:
        raise WorldError(f"{where}: install.{install_id}: only catalog descriptors (pkg-path) are supported")
    wanted = descriptor.get("version")
    candidates = [
        (attr, entry) for attr, entry in catalog.items()
        if entry["pkg-path"] == pkg_path and (wanted is None or entry["version"] == wanted)
    ]
    if not candidates:
        known = sorted({f'{e["pkg-path"]} {e["version"]}' for e in catalog.values()})
        raise WorldError(
            f"{where}: install.{install_id}: no catalog package with pkg-path {pkg_path!r}"
            + (f" and version {wanted!r}" if wanted else "") + f"; known: {', '.join(known)}")
    # Without a version constraint the newest version wins, as in the catalog.
    return max(candidates, key=lambda c: version_key(c[1]["version"]))[0]


def custom_catalog(pkg_path):
    """The catalog of a custom-catalog pkg-path (`acme` of `acme/hello-private`), else None
    (Flox: a pkg-path with a '/' whose first part has no '.')."""
    first, sep, rest = pkg_path.partition("/")
    return first if sep and rest and "." not in first else None


def locked_entry(catalog, built, attr, install_id, descriptor):
    meta = catalog[attr]
    in_catalog = custom_catalog(meta["pkg-path"])
    pkg = built[attr]
    name = pkg["name"]
    version = meta["version"]
    if not name.endswith("-" + version):
        raise WorldError(f"catalog.toml: [{attr}] version {version!r} does not match derivation name {name!r}")
    return {
        # A custom-catalog package's attr_path is its name within the catalog.
        "attr_path": meta["pkg-path"].split("/", 1)[1] if in_catalog else meta["pkg-path"],
        "broken": False,
        "derivation": pkg["drvPath"],
        "description": meta["description"],
        "install_id": install_id,
        "license": meta.get("license", "MIT"),
        "locked_url": f"https://github.com/flox/nixpkgs?rev={REV}",
        "name": name,
        "pname": name[: -len(version) - 1],
        "rev": REV,
        "rev_count": REV_COUNT,
        "rev_date": REV_DATE,
        "scrape_date": SCRAPE_DATE,
        "stabilities": ["unstable"],
        "unfree": False,
        "version": version,
        "outputs_to_install": meta.get("outputs_to_install", ["out"]),
        "outputs": pkg["outputs"],
        "system": SYSTEM,
        "group": descriptor.get("pkg-group", "toplevel"),
        "priority": descriptor.get("priority", DEFAULT_PRIORITY),
    }


def lock_manifest(catalog, built, manifest, where):
    if manifest.get("schema-version") is None and manifest.get("version") != 1:
        raise WorldError(f"{where}: needs schema-version = \"1.10.0\" (or version = 1)")
    manifest.setdefault("install", {})
    manifest.setdefault("options", {})
    packages = []
    attrs = {}
    for install_id, descriptor in manifest["install"].items():
        attr = resolve(catalog, install_id, descriptor, where)
        attrs[install_id] = attr
        packages.append(locked_entry(catalog, built, attr, install_id, descriptor))
    return {"lockfile-version": 1, "manifest": manifest, "packages": packages}, attrs


def main(world_dir, built_json, out_dir):
    world = pathlib.Path(world_dir)
    out = pathlib.Path(out_dir)
    built = json.loads(pathlib.Path(built_json).read_text())
    catalog = tomllib.loads((world / "catalog.toml").read_text())
    for attr, entry in catalog.items():
        if attr not in built:
            raise WorldError(f"catalog.toml: [{attr}] is not an attribute of packages.nix; "
                             f"known: {', '.join(sorted(built))}")
        for key in ("pkg-path", "version", "description"):
            if not isinstance(entry.get(key), str):
                raise WorldError(f"catalog.toml: [{attr}] {key} = {entry.get(key)!r}: needs a string")
    hub = tomllib.loads((world / "hub.toml").read_text())
    private = set(hub.get("private", []))

    environments = {}
    plan = []
    for manifest_path in sorted((world / "envs").glob("*/*/*/manifest.toml")):
        rel = manifest_path.relative_to(world)
        owner, name, gen = rel.parts[1:4]
        if not gen.isdigit():
            raise WorldError(f"{rel}: generation directory must be a number, got {gen!r}")
        text = manifest_path.read_text()
        lock, attrs = lock_manifest(catalog, built, tomllib.loads(text), str(rel))
        dest = out / "world" / "envs" / owner / name / gen
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "manifest.toml").write_text(text)
        (dest / "manifest.lock").write_text(json.dumps(lock, indent=2) + "\n")
        env_ref = f"{owner}/{name}"
        env = environments.setdefault(env_ref, {
            "owner": owner, "name": name, "private": env_ref in private, "generations": {},
        })
        env["generations"][gen] = {
            "manifest_toml": str(dest.relative_to(out) / "manifest.toml"),
            "manifest_lock": str(dest.relative_to(out) / "manifest.lock"),
            "activate_mode": lock["manifest"]["options"].get("activate", {}).get("mode"),
            "packages": [
                {
                    "install_id": p["install_id"],
                    "attr": attrs[p["install_id"]],
                    "pname": p["pname"],
                    "version": p["version"],
                    "priority": p["priority"],
                    "outputs_to_install": p["outputs_to_install"],
                    "store_paths": p["outputs"],
                    "catalog": custom_catalog(catalog[attrs[p["install_id"]]]["pkg-path"]),
                }
                for p in lock["packages"]
            ],
        }
    unknown_private = private - set(environments)
    if unknown_private:
        raise WorldError(f"hub.toml: private lists {sorted(unknown_private)}, which have no envs/ directory")
    for env_ref, env in sorted(environments.items()):
        gens = sorted(env["generations"], key=int)
        if gens != [str(i) for i in range(1, len(gens) + 1)]:
            raise WorldError(f"envs/{env_ref}: generations must be 1..N without gaps, got {gens}")
        env["live_generation"] = len(gens)
        for gen in gens:
            g = env["generations"][gen]
            plan.append("\t".join([env_ref, gen, "private" if env["private"] else "public",
                                   g["manifest_lock"], g["manifest_toml"]]))
    (out / "plan.tsv").write_text("".join(line + "\n" for line in plan))
    grants = hub.get("grants", [])
    for i, grant in enumerate(grants):
        if set(grant) != {"owner", "handle"}:
            raise WorldError(f"hub.toml: grants[{i}] = {grant!r}: needs exactly the keys owner and handle")
    (out / "grants.tsv").write_text("".join(f'{g["owner"]}\t{g["handle"]}\n' for g in grants))
    catalogs = {}
    for attr, entry in sorted(catalog.items()):
        name = custom_catalog(entry["pkg-path"])
        if name:
            catalogs.setdefault(name, {"packages": {}})["packages"][entry["pkg-path"].split("/", 1)[1]] = {
                "attr": attr, "store_paths": built[attr]["outputs"]}
    (out / "catalog_packages.tsv").write_text("".join(
        f'{c}\t{n}\t{",".join(f"{o}={p}" for o, p in sorted(pkg["store_paths"].items()))}\n'
        for c, cat in sorted(catalogs.items()) for n, pkg in sorted(cat["packages"].items())))
    world_json = {
        "system": SYSTEM,
        "environments": environments,
        "grants": grants,
        "catalogs": catalogs,
        "packages": {attr: {"name": built[attr]["name"], "derivation": built[attr]["drvPath"],
                            "store_paths": built[attr]["outputs"]} for attr in sorted(built)},
    }
    (out / "world.json").write_text(json.dumps(world_json, indent=2) + "\n")


def closure(paths):
    """The runtime closure of store paths, from the (host) Nix store."""
    result = subprocess.run(["nix-store", "--query", "--requisites", *paths],
                            check=True, capture_output=True, text=True)
    return sorted(result.stdout.split())


def finish(out_dir, stamp, public_key_file):
    """Add what is known after building and publishing: closures, which paths only the
    catalogs' stores have (private), stamp, keys."""
    hub = pathlib.Path(out_dir)
    path = hub / "world.json"
    world = json.loads(path.read_text())

    def public(p):
        return (hub / "cache" / f"{pathlib.Path(p).name[:32]}.narinfo").exists()

    private = set()
    for name, cat in world.get("catalogs", {}).items():
        cat["public_key_file"] = f"catalogs/{name}/key.pub"
        cat["public_key"] = (hub / cat["public_key_file"]).read_text().strip()
        for pkg in cat["packages"].values():
            pkg["closure"] = closure(list(pkg["store_paths"].values()))
            pkg["private_paths"] = [p for p in pkg["closure"] if not public(p)]
            private.update(pkg["private_paths"])
    every = set()
    for env in world["environments"].values():
        for gen in env["generations"].values():
            paths = [p for pkg in gen["packages"] for p in pkg["store_paths"].values()]
            gen["closure"] = closure(paths) if paths else []
            # Custom-catalog package (catalog/name) -> its closure paths only the catalog's store has.
            gen["private_paths"] = {
                f'{pkg["catalog"]}/{n}': world["catalogs"][pkg["catalog"]]["packages"][n]["private_paths"]
                for pkg in gen["packages"] if pkg.get("catalog")
                for n in [catalog_name(world, pkg)]
            }
            every.update(gen["closure"])
    world["all_store_paths"] = sorted((every | set(closure(
        [p for pkg in world["packages"].values() for p in pkg["store_paths"].values()]))) - private)
    world["catalog_store_paths"] = sorted(private)
    world["stamp"] = stamp
    world["cache_public_key"] = pathlib.Path(public_key_file).read_text().strip()
    path.write_text(json.dumps(world, indent=2) + "\n")


def catalog_name(world, pkg):
    """The name within its catalog of a generation's custom-catalog package entry."""
    for name, entry in world["catalogs"][pkg["catalog"]]["packages"].items():
        if entry["attr"] == pkg["attr"]:
            return name
    raise WorldError(f'package {pkg["attr"]} is in no catalog of world.json')


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["--finish"] and len(sys.argv) == 5:
            finish(*sys.argv[2:])
        elif len(sys.argv) == 4:
            main(*sys.argv[1:])
        else:
            sys.exit("usage: lock.py WORLD_DIR BUILT_JSON OUT_DIR | lock.py --finish OUT_DIR STAMP KEY_FILE")
    except subprocess.CalledProcessError as e:
        sys.exit(f"world: {' '.join(e.cmd[:3])} failed: {e.stderr.strip()}")
    except (WorldError, tomllib.TOMLDecodeError, OSError) as e:
        sys.exit(f"world: {e}")
