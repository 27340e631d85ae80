//! Reading store paths as a container sees them, from where the node keeps them.
//!
//! Rendered trees and store contents name `/nix/store/<hash>-<name>/…` (the container's
//! view), while on the node those paths live in the node store directory (`store_dir`) and
//! the host may have no `/nix` at all. [`StoreRead`] maps one to the other and follows
//! symlinks with the container's semantics: an absolute link into `/nix/store` lands in the
//! node store, a relative one stays relative, so `bin -> /nix/store/<other>/bin` resolves
//! the same on the node as in the container. Store contents come from verified NARs (signed
//! by a trusted key), never from a pod.
use std::collections::HashSet;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use imageless_core::store_path::STORE_DIR;

/// Symlinks followed while resolving one path before giving up (as the kernel's ELOOP).
const MAX_LINKS: usize = 40;

#[derive(Debug, Clone)]
pub struct StoreRead {
    /// The node store directory: `<dir>/<hash>-<name>` is `/nix/store/<hash>-<name>`.
    pub dir: PathBuf,
    /// Store paths (base names) read from another directory: those a pull unpacked only into
    /// the closure view it builds (see [`crate::deferred_store`]).
    elsewhere: Option<(PathBuf, Arc<HashSet<String>>)>,
}

impl StoreRead {
    pub fn new(dir: impl Into<PathBuf>) -> StoreRead {
        StoreRead { dir: dir.into(), elsewhere: None }
    }

    /// Reads the store paths named in `names` (base names) from `dir` instead.
    pub fn with_paths_in(mut self, dir: PathBuf, names: HashSet<String>) -> StoreRead {
        self.elsewhere = (!names.is_empty()).then(|| (dir, Arc::new(names)));
        self
    }

    /// Where the node reads `path` (a container path): under the node store for
    /// `/nix/store/…`, the path itself otherwise.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(STORE_DIR) {
            Ok(rest) if !rest.as_os_str().is_empty() => {
                let base = rest.components().next().map(|c| c.as_os_str().to_string_lossy());
                match (&self.elsewhere, base) {
                    (Some((dir, names)), Some(base)) if names.contains(base.as_ref()) => dir.join(rest),
                    _ => self.dir.join(rest),
                }
            }
            _ => path.to_path_buf(),
        }
    }

    /// The host path of what `path` (a container path) finally names, every symlink on the
    /// way followed as in the container.
    pub fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        let mut todo: Vec<PathBuf> = components_reversed(path);
        let mut cur = PathBuf::from("/");
        let mut links = 0;
        while let Some(part) = todo.pop() {
            if part.as_os_str() == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&part);
            // `/nix` and `/nix/store` themselves need not exist on the node.
            if Path::new(STORE_DIR).starts_with(&next) {
                cur = next;
                continue;
            }
            let host = self.host_path(&next);
            let meta = std::fs::symlink_metadata(&host)?;
            if !meta.file_type().is_symlink() {
                cur = next;
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::other(format!("too many levels of symbolic links at {}", next.display())));
            }
            let target = std::fs::read_link(&host)?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            todo.extend(components_reversed(&target));
        }
        Ok(self.host_path(&cur))
    }

    /// Whether `path` (a container path) is a directory, following symlinks.
    pub fn is_dir(&self, path: &Path) -> bool {
        self.resolve(path).is_ok_and(|host| host.is_dir())
    }
}

/// The normal and `..` components of `path`, last first (a stack to pop from).
fn components_reversed(path: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    parts.reverse();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_links_into_the_store_as_the_container_would() {
        let t = tempfile::tempdir().unwrap();
        let store = StoreRead::new(t.path());
        let a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
        let b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";
        std::fs::create_dir_all(t.path().join(b).join("bin")).unwrap();
        std::fs::write(t.path().join(b).join("bin/tool"), "x").unwrap();
        std::fs::create_dir_all(t.path().join(a)).unwrap();
        symlink(format!("/nix/store/{b}/bin"), t.path().join(a).join("bin")).unwrap();
        symlink("bin/tool", t.path().join(a).join("alias")).unwrap();
        symlink("../alias", t.path().join(b).join("bin/up")).unwrap();

        let tool = t.path().join(b).join("bin/tool");
        assert_eq!(store.resolve(Path::new(&format!("/nix/store/{a}/bin/tool"))).unwrap(), tool);
        assert_eq!(store.resolve(Path::new(&format!("/nix/store/{a}/alias"))).unwrap(), tool);
        // `..` after a link is taken from the link's target, as the kernel does.
        assert!(store.resolve(Path::new(&format!("/nix/store/{a}/bin/up"))).is_err(), "b has no alias");
        assert!(store.is_dir(Path::new(&format!("/nix/store/{a}/bin"))));
        assert!(!store.is_dir(Path::new(&format!("/nix/store/{a}/alias"))));
        assert_eq!(store.host_path(Path::new(&format!("/nix/store/{a}"))), t.path().join(a));

        symlink("loop", t.path().join(a).join("loop")).unwrap();
        let e = store.resolve(Path::new(&format!("/nix/store/{a}/loop"))).unwrap_err();
        assert!(e.to_string().contains("too many levels"), "{e}");
    }

    /// Paths named as elsewhere (unpacked only into a view) are read there, links into and out
    /// of them followed across the two directories; every other path stays in the store.
    #[test]
    fn paths_held_elsewhere_are_read_there() {
        let t = tempfile::tempdir().unwrap();
        let (store_dir, view) = (t.path().join("store"), t.path().join("view"));
        let a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
        let b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";
        std::fs::create_dir_all(view.join(b).join("bin")).unwrap();
        std::fs::write(view.join(b).join("bin/tool"), "x").unwrap();
        std::fs::create_dir_all(store_dir.join(a)).unwrap();
        symlink(format!("/nix/store/{b}/bin"), store_dir.join(a).join("bin")).unwrap();
        let store = StoreRead::new(&store_dir).with_paths_in(view.clone(), HashSet::from([b.to_string()]));
        assert_eq!(store.host_path(Path::new(&format!("/nix/store/{a}"))), store_dir.join(a));
        assert_eq!(store.host_path(Path::new(&format!("/nix/store/{b}/bin"))), view.join(b).join("bin"));
        assert_eq!(
            store.resolve(Path::new(&format!("/nix/store/{a}/bin/tool"))).unwrap(),
            view.join(b).join("bin/tool")
        );
        // A name that only starts like one held elsewhere is not.
        let b2 = format!("{b}x");
        assert_eq!(store.host_path(Path::new(&format!("/nix/store/{b2}"))), store_dir.join(&b2));
        assert!(StoreRead::new(&store_dir).resolve(Path::new(&format!("/nix/store/{a}/bin/tool"))).is_err());
    }
}
