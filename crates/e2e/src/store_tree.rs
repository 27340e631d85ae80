//! What a node store holds, for comparing two pulls: every entry of some store paths (path,
//! type, mode, and a file's SHA-256 or a link's target), sorted. Two stores that agree on this
//! hold byte-identical trees.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The entries of `closure` (`/nix/store/…` paths) as they are under `store`.
pub fn tree(store: &Path, closure: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in closure {
        walk(store, Path::new(p.trim_start_matches("/nix/store/")), &mut out);
    }
    out.sort();
    out
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) {
    let path = root.join(rel);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        out.push(format!("{} missing", rel.display()));
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(&path).map(|t| t.display().to_string()).unwrap_or_default();
        out.push(format!("{} link {target}", rel.display()));
    } else if ft.is_dir() {
        out.push(format!("{} dir {mode:o}", rel.display()));
        for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            walk(root, &rel.join(e.file_name()), out);
        }
    } else {
        let digest = std::fs::read(&path).map(|b| hex_digest(&b)).unwrap_or_else(|e| format!("unreadable: {e}"));
        out.push(format!("{} file {mode:o} {digest}", rel.display()));
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
