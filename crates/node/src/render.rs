//! Rendering an environment: Flox's buildenv semantics as a symlink tree.
//!
//! Every file of every selected package output is linked into one tree; a directory that
//! only one package provides stays a single link, shared directories become real ones and are
//! merged. On a file conflict the lower priority number wins; equal priorities are an error
//! naming both packages and the path, as `flox` reports it. `dev` additionally follows
//! `nix-support/propagated-build-inputs`. We render outside the Nix store (no derivation to
//! evaluate, no nixpkgs needed on the node). Packages are read from the node store through
//! [`StoreRead`]; the links name `/nix/store/…`, as the container sees them. The rendered
//! environment's closure (kept by [`crate::gc`]) keeps the link targets alive.
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use imageless_core::activation::Mode;
use imageless_core::store_path::StorePath;

use crate::store_read::StoreRead;

/// One store path to link, with where it came from (for conflict messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSource {
    pub install_id: String,
    pub output: String,
    pub store_path: StorePath,
    pub priority: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("flox: {conflict}. Resolve by uninstalling one of the conflicting packages or setting the priority of the preferred package to a value lower than '{priority}'")]
    Conflict { conflict: String, priority: u64 },
    #[error("flox: store path {0} is a file, not a package directory")]
    NotADirectory(String),
    #[error("flox: rendering the environment at {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RenderError + '_ {
    move |source| RenderError::Io { path: path.display().to_string(), source }
}

#[derive(Debug, Clone)]
struct Origin {
    install_id: String,
    output: String,
    priority: u64,
    propagated: bool,
}

#[derive(Debug)]
enum Node {
    Link { target: PathBuf, is_dir: bool, origin: Origin },
    Dir(BTreeMap<OsString, Node>),
}

/// Paths buildenv never links (`builder.pl`, `findFiles`).
fn skipped(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    s == "propagated-build-inputs"
        || s == "nix-support"
        || s.ends_with("info/dir")
        || (s.starts_with("share/mime/") && !(s == "share/mime/packages" || s.starts_with("share/mime/packages/")))
        || name == "perllocal.pod"
        || name == "log"
}

/// The tree being planned; paths in it are container paths (`/nix/store/…`), read through
/// `store`.
struct Plan {
    root: BTreeMap<OsString, Node>,
    store: StoreRead,
}

impl Plan {
    fn new(store: StoreRead) -> Plan {
        Plan { root: BTreeMap::new(), store }
    }

    fn add_package(&mut self, root: &Path, origin: &Origin) -> Result<(), RenderError> {
        if !self.store.is_dir(root) {
            return Err(RenderError::NotADirectory(root.display().to_string()));
        }
        add_dir_entries(&self.store, &mut self.root, Path::new(""), root, origin)
    }
}

fn add_dir_entries(
    store: &StoreRead,
    map: &mut BTreeMap<OsString, Node>,
    rel: &Path,
    src_dir: &Path,
    origin: &Origin,
) -> Result<(), RenderError> {
    let host = store.resolve(src_dir).map_err(io(src_dir))?;
    let mut entries: Vec<_> =
        std::fs::read_dir(&host).map_err(io(src_dir))?.filter_map(Result::ok).map(|e| e.file_name()).collect();
    entries.sort();
    for name in entries {
        let src = src_dir.join(&name);
        add_entry(store, map, &rel.join(&name), name, &src, origin)?;
    }
    Ok(())
}

fn add_entry(
    store: &StoreRead,
    map: &mut BTreeMap<OsString, Node>,
    rel: &Path,
    name: OsString,
    src: &Path,
    origin: &Origin,
) -> Result<(), RenderError> {
    if skipped(rel) {
        return Ok(());
    }
    let src_is_dir = store.is_dir(src);
    match map.get_mut(&name) {
        None => {
            map.insert(name, Node::Link { target: src.to_path_buf(), is_dir: src_is_dir, origin: origin.clone() });
        }
        Some(Node::Dir(children)) if src_is_dir => add_dir_entries(store, children, rel, src, origin)?,
        Some(node @ Node::Link { is_dir: true, .. }) if src_is_dir => {
            // A second package shares this directory: make it real and merge both.
            let Node::Link { target, origin: old, .. } = std::mem::replace(node, Node::Dir(BTreeMap::new())) else {
                unreachable!()
            };
            let Node::Dir(children) = node else { unreachable!() };
            add_dir_entries(store, children, rel, &target, &old)?;
            add_dir_entries(store, children, rel, src, origin)?;
        }
        Some(Node::Link { target, is_dir: false, origin: old }) if !src_is_dir => {
            let same_file = store.resolve(target).ok().is_some_and(|a| store.resolve(src).ok() == Some(a));
            if same_file || origin.priority > old.priority || origin.propagated {
                return Ok(());
            }
            if origin.priority < old.priority || old.propagated {
                *target = src.to_path_buf();
                *old = origin.clone();
                return Ok(());
            }
            return Err(conflict(old, origin, rel));
        }
        Some(existing) => {
            if origin.propagated {
                return Ok(());
            }
            let old = match existing {
                Node::Link { origin, .. } => origin.clone(),
                Node::Dir(_) => Origin {
                    install_id: "(several packages)".into(),
                    output: String::new(),
                    priority: origin.priority,
                    propagated: false,
                },
            };
            return Err(conflict(&old, origin, rel));
        }
    }
    Ok(())
}

fn conflict(old: &Origin, new: &Origin, rel: &Path) -> RenderError {
    let conflict = if old.install_id == new.install_id {
        format!(
            "'{}^{}' conflicts with '{}^{}'. Both outputs of the same package provide the file '{}'",
            old.install_id,
            old.output,
            new.install_id,
            new.output,
            rel.display()
        )
    } else {
        format!(
            "'{}' conflicts with '{}'. Both packages provide the file '{}'",
            old.install_id,
            new.install_id,
            rel.display()
        )
    };
    RenderError::Conflict { conflict, priority: old.priority }
}

fn materialize(map: &BTreeMap<OsString, Node>, dir: &Path) -> Result<(), RenderError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, node) in map {
        let path = dir.join(name);
        match node {
            Node::Link { target, .. } => std::os::unix::fs::symlink(target, &path).map_err(io(&path))?,
            Node::Dir(children) => materialize(children, &path)?,
        }
    }
    Ok(())
}

/// Store paths named in a package's `nix-support/<file>`.
fn propagated_from(store: &StoreRead, store_path: &Path, file: &str) -> Vec<StorePath> {
    store
        .resolve(&store_path.join("nix-support").join(file))
        .and_then(std::fs::read_to_string)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| StorePath::parse(p).ok())
        .collect()
}

/// Renders `sources` for `mode` into `dest` (which must not exist), reading the packages
/// from `store`. Returns every store path linked, propagated ones included, for the closure.
pub fn render_tree(
    sources: &[LinkSource],
    mode: Mode,
    dest: &Path,
    store: &StoreRead,
) -> Result<Vec<StorePath>, RenderError> {
    let mut plan = Plan::new(store.clone());
    let mut linked: Vec<StorePath> = Vec::new();
    for s in sources {
        let origin = Origin {
            install_id: s.install_id.clone(),
            output: s.output.clone(),
            priority: s.priority,
            propagated: false,
        };
        plan.add_package(Path::new(s.store_path.as_str()), &origin)?;
        linked.push(s.store_path.clone());
    }
    // Propagated packages after all explicit ones, transitively, never overriding them.
    let mut queue: Vec<(StorePath, u64, String)> =
        sources.iter().map(|s| (s.store_path.clone(), s.priority, s.install_id.clone())).collect();
    let mut counter = 0u64;
    while let Some((path, priority, id)) = queue.pop() {
        let mut next = propagated_from(store, Path::new(path.as_str()), "propagated-user-env-packages");
        if mode == Mode::Dev {
            next.extend(
                propagated_from(store, Path::new(path.as_str()), "propagated-build-inputs")
                    .into_iter()
                    .filter(|p| !p.as_str().ends_with("-stubs")),
            );
        }
        for p in next {
            if linked.contains(&p) || !store.is_dir(Path::new(p.as_str())) {
                continue;
            }
            counter += 1;
            let prio = if priority < 1000 { priority * 1000 } else { priority } + counter;
            let origin =
                Origin { install_id: id.clone(), output: "propagated".into(), priority: prio, propagated: true };
            plan.add_package(Path::new(p.as_str()), &origin)?;
            linked.push(p.clone());
            queue.push((p, prio, id.clone()));
        }
    }
    materialize(&plan.root, dest)?;
    Ok(linked)
}

/// Writes a generated file into a rendered tree, turning a linked `activate.d` directory (if a
/// package ships one, read through `store`) into a real directory first.
pub fn write_generated(tree: &Path, rel: &str, contents: &[u8], store: &StoreRead) -> Result<(), RenderError> {
    let path = tree.join(rel);
    let mut cur = tree.to_path_buf();
    for comp in Path::new(rel).parent().into_iter().flat_map(|p| p.components()) {
        cur.push(comp);
        if let Ok(meta) = std::fs::symlink_metadata(&cur) {
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&cur).map_err(io(&cur))?;
                let host = store.resolve(&target).map_err(io(&target))?;
                std::fs::remove_file(&cur).map_err(io(&cur))?;
                std::fs::create_dir(&cur).map_err(io(&cur))?;
                for e in std::fs::read_dir(&host).map_err(io(&target))?.flatten() {
                    let link = target.join(e.file_name());
                    std::os::unix::fs::symlink(&link, cur.join(e.file_name())).map_err(io(&cur))?;
                }
            }
        } else {
            std::fs::create_dir_all(&cur).map_err(io(&cur))?;
        }
    }
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, contents).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake "store paths" must look like store paths to pass validation, but live in a temp
    /// dir: render only reads them, so a StorePath whose text differs from the real location
    /// is not possible. Instead these tests render real dirs through `render_dirs`.
    fn pkg(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(name);
        for (rel, content) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    fn render_dirs(pkgs: &[(&Path, &str, u64)], dest: &Path) -> Result<(), RenderError> {
        // Paths outside /nix/store are read as they are.
        let mut plan = Plan::new(StoreRead::new("/nonexistent-store"));
        for (dir, id, prio) in pkgs {
            let origin =
                Origin { install_id: id.to_string(), output: "out".into(), priority: *prio, propagated: false };
            plan.add_package(dir, &origin)?;
        }
        materialize(&plan.root, dest)
    }

    #[test]
    fn merges_shared_dirs_and_keeps_single_dirs_as_links() {
        let t = tempfile::tempdir().unwrap();
        let a = pkg(t.path(), "a", &[("bin/a", "a"), ("share/a/x", "x"), ("nix-support/setup-hook", "")]);
        let b = pkg(t.path(), "b", &[("bin/b", "b"), ("lib/libb.so", "")]);
        let out = t.path().join("out");
        render_dirs(&[(&a, "a", 5), (&b, "b", 5)], &out).unwrap();
        assert!(std::fs::symlink_metadata(out.join("bin")).unwrap().is_dir(), "shared bin/ is a real dir");
        assert_eq!(std::fs::read_link(out.join("bin/a")).unwrap(), a.join("bin/a"));
        assert_eq!(std::fs::read_link(out.join("lib")).unwrap(), b.join("lib"), "lib/ from one package stays a link");
        assert!(!out.join("nix-support").exists());
    }

    #[test]
    fn lower_priority_number_wins_and_equal_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let blue = pkg(t.path(), "blue", &[("bin/who", "blue")]);
        let green = pkg(t.path(), "green", &[("bin/who", "green")]);
        let out = t.path().join("out1");
        render_dirs(&[(&blue, "blue", 10), (&green, "green", 5)], &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("bin/who")).unwrap(), "green");
        let out = t.path().join("out2");
        render_dirs(&[(&blue, "blue", 5), (&green, "green", 10)], &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("bin/who")).unwrap(), "blue");
        let err = render_dirs(&[(&blue, "blue", 5), (&green, "green", 5)], &t.path().join("out3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "flox: 'blue' conflicts with 'green'. Both packages provide the file 'bin/who'. Resolve by uninstalling one of the conflicting packages or setting the priority of the preferred package to a value lower than '5'"
        );
    }

    /// Packages are read from the node store, links name /nix/store as the container sees it,
    /// and an absolute link into /nix/store inside a package is followed in the node store.
    #[test]
    fn reads_the_node_store_and_links_the_container_paths() {
        let t = tempfile::tempdir().unwrap();
        let store = StoreRead::new(t.path().join("store"));
        let (a, b, c) = (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0",
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0",
            "cccccccccccccccccccccccccccccccc-c-1.0",
        );
        pkg(&store.dir, b, &[("bin/tool", "b")]);
        pkg(&store.dir, c, &[("bin/other", "c")]);
        std::fs::create_dir_all(store.dir.join(a)).unwrap();
        std::os::unix::fs::symlink(format!("/nix/store/{b}/bin"), store.dir.join(a).join("bin")).unwrap();
        let source = |name: &str, id: &str| LinkSource {
            install_id: id.into(),
            output: "out".into(),
            store_path: StorePath::parse(&format!("/nix/store/{name}")).unwrap(),
            priority: 5,
        };
        let out = t.path().join("out");
        let linked = render_tree(&[source(a, "a"), source(c, "c")], Mode::Run, &out, &store).unwrap();
        assert_eq!(linked.len(), 2);
        assert!(std::fs::symlink_metadata(out.join("bin")).unwrap().is_dir(), "bin/ merged through a's link");
        assert_eq!(std::fs::read_link(out.join("bin/tool")).unwrap(), Path::new(&format!("/nix/store/{a}/bin/tool")));
        assert_eq!(std::fs::read_link(out.join("bin/other")).unwrap(), Path::new(&format!("/nix/store/{c}/bin/other")));
        let e = render_tree(
            &[source("dddddddddddddddddddddddddddddddd-gone", "d")],
            Mode::Run,
            &t.path().join("x"),
            &store,
        )
        .unwrap_err();
        assert!(e.to_string().contains("dddddddddddddddddddddddddddddddd-gone"), "{e}");
    }

    #[test]
    fn generated_file_in_a_linked_dir_makes_it_real() {
        let t = tempfile::tempdir().unwrap();
        let a = pkg(t.path(), "a", &[("activate.d/theirs", "x")]);
        let out = t.path().join("out");
        render_dirs(&[(&a, "a", 5)], &out).unwrap();
        write_generated(&out, "activate.d/imageless.json", b"{}", &StoreRead::new("/nonexistent-store")).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("activate.d/theirs")).unwrap(), "x");
        assert_eq!(std::fs::read_to_string(out.join("activate.d/imageless.json")).unwrap(), "{}");
        assert_eq!(std::fs::read_to_string(a.join("activate.d/imageless.json")).ok(), None, "package untouched");
    }
}
