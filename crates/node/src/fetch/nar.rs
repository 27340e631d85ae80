//! Streaming NAR unpacking (Nix's src/libutil/archive.cc) into a fresh directory tree, as
//! Nix lays out a store path: files 0444 (0555 when executable), directories 0555, every
//! mtime 1. Strict: names must be non-empty, not `.`/`..`, without `/` or NUL, and in strictly
//! increasing order; anything else is refused. Every node is created fresh (`create_new`,
//! `mkdir`) inside a directory this unpack made, so a symlink in the archive is never followed.
//!
//! Written by hand rather than with a NAR crate: we need the strict checks above, bounded
//! strings, a depth limit, Nix's permissions and mtimes, and to stream from any `Read`
//! without buffering a file — in ~200 lines.
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why an archive was not unpacked.
#[derive(Debug)]
pub enum NarError {
    /// The source failed or ended early (`UnexpectedEof`).
    Read(io::Error),
    /// The bytes are not a NAR we accept.
    Format(String),
    /// Writing the tree failed.
    Write { path: std::path::PathBuf, source: io::Error },
}

const MAX_NAME: u64 = 255;
const MAX_TARGET: u64 = 4095;
const MAX_TOKEN: u64 = 64;
const MAX_DEPTH: usize = 256;

/// File contents are decoded, hashed and written in pieces of this size. Larger than the
/// 64 KiB it was: a third fewer `write` calls and decoder turns in a pull of `flox/xlarge`
/// (44,700 → 28,900 writes) and with the preallocation below ~0.2 s less system time; small
/// enough that a piece is still in the core's cache (1 MiB of L2 per core on the lab machine;
/// 1 MiB pieces were slower) when it is hashed and then written.
const FILE_CHUNK: usize = 256 * 1024;

/// Files at least this large get their blocks in one `fallocate` before their contents are
/// written: ext4 otherwise reserves and maps them page by page as the writes come (delayed
/// allocation), ~0.1 s of system time over `flox/xlarge`'s 1.6 GB.
const PREALLOCATE_FROM: u64 = 64 * 1024;

struct Parser<'a, R: Read> {
    r: &'a mut R,
    /// Reused for every file's contents.
    buf: Vec<u8>,
    /// The archive's size: no file in it is longer.
    nar_size: u64,
    /// Whether the second tree (see [`unpack_linked`]) is still being made: false once one of
    /// its steps failed (the unpack itself goes on).
    linking: bool,
}

fn format(msg: impl Into<String>) -> NarError {
    NarError::Format(msg.into())
}

impl<R: Read> Parser<'_, R> {
    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b).map_err(NarError::Read)?;
        Ok(u64::from_le_bytes(b))
    }

    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = ((8 - len % 8) % 8) as usize;
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b[..pad]).map_err(NarError::Read)?;
        if b[..pad].iter().any(|&x| x != 0) {
            return Err(format("non-zero padding"));
        }
        Ok(())
    }

    /// A string of at most `max` bytes.
    fn bytes(&mut self, max: u64, what: &str) -> Result<Vec<u8>, NarError> {
        let len = self.u64()?;
        if len > max {
            return Err(format(format!("{what} of {len} bytes (at most {max})")));
        }
        let mut v = vec![0u8; len as usize];
        self.r.read_exact(&mut v).map_err(NarError::Read)?;
        self.padding(len)?;
        Ok(v)
    }

    fn expect(&mut self, token: &str) -> Result<(), NarError> {
        let got = self.bytes(MAX_TOKEN, "token")?;
        if got != token.as_bytes() {
            return Err(format(format!("expected {token:?}, found {:?}", String::from_utf8_lossy(&got))));
        }
        Ok(())
    }

    fn token(&mut self) -> Result<Vec<u8>, NarError> {
        self.bytes(MAX_TOKEN, "token")
    }

    /// A step of the second tree; its failure stops the second tree, not the unpack.
    fn link_step(&mut self, link: Option<&Path>, step: impl FnOnce(&Path) -> io::Result<()>) {
        let Some(link) = link.filter(|_| self.linking) else { return };
        if let Err(e) = step(link) {
            tracing::debug!(path = %link.display(), "linking while unpacking stopped: {e}");
            self.linking = false;
        }
    }

    /// One node (after its "("), written at `path` (and linked at `link`, see
    /// [`unpack_linked`]), up to and including its ")".
    fn node(&mut self, path: &Path, link: Option<&Path>, depth: usize) -> Result<(), NarError> {
        if depth > MAX_DEPTH {
            return Err(format(format!("directories nested deeper than {MAX_DEPTH}")));
        }
        self.expect("type")?;
        let kind = self.token()?;
        let write_err = |source| NarError::Write { path: path.to_path_buf(), source };
        match kind.as_slice() {
            b"regular" => {
                let mut tag = self.token()?;
                let mut executable = false;
                if tag == b"executable" {
                    self.expect("")?;
                    executable = true;
                    tag = self.token()?;
                }
                if tag != b"contents" {
                    return Err(format(format!("expected \"contents\", found {:?}", String::from_utf8_lossy(&tag))));
                }
                let len = self.u64()?;
                if len > self.nar_size {
                    return Err(format(format!("a file of {len} bytes in an archive of {} bytes", self.nar_size)));
                }
                let mode = if executable { 0o555 } else { 0o444 };
                let mut file =
                    OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(write_err)?;
                if len >= PREALLOCATE_FROM {
                    // Best effort: a file system without it just allocates as the writes come.
                    let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len);
                }
                let copied = copy_exact(&mut *self.r, &mut self.buf, &mut file, len, path)?;
                debug_assert_eq!(copied, len);
                self.padding(len)?;
                set_file_mtime(&file).map_err(write_err)?;
                self.link_step(link, |to| std::fs::hard_link(path, to));
                self.expect(")")
            }
            b"symlink" => {
                self.expect("target")?;
                let target = self.bytes(MAX_TARGET, "symlink target")?;
                if target.is_empty() || target.contains(&0) {
                    return Err(format("empty symlink target or one with NUL"));
                }
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), path).map_err(write_err)?;
                set_mtime_nofollow(path).map_err(write_err)?;
                // linkat without AT_SYMLINK_FOLLOW: the symlink itself.
                self.link_step(link, |to| std::fs::hard_link(path, to));
                self.expect(")")
            }
            b"directory" => {
                std::fs::create_dir(path).map_err(write_err)?;
                self.link_step(link, |to| std::fs::create_dir(to));
                let mut previous: Option<Vec<u8>> = None;
                loop {
                    let tag = self.token()?;
                    match tag.as_slice() {
                        b")" => break,
                        b"entry" => {}
                        other => {
                            return Err(format(format!(
                                "expected \"entry\" or \")\", found {:?}",
                                String::from_utf8_lossy(other)
                            )))
                        }
                    }
                    self.expect("(")?;
                    self.expect("name")?;
                    let name = self.bytes(MAX_NAME, "entry name")?;
                    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
                        return Err(format(format!("entry name {:?} is not allowed", String::from_utf8_lossy(&name))));
                    }
                    if previous.as_ref().is_some_and(|p| *p >= name) {
                        return Err(format(format!(
                            "entry {:?} is out of order or repeated",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    self.expect("node")?;
                    self.expect("(")?;
                    let child = std::ffi::OsStr::from_bytes(&name);
                    let child_link = link.filter(|_| self.linking).map(|l| l.join(child));
                    self.node(&path.join(child), child_link.as_deref(), depth + 1)?;
                    self.expect(")")?;
                    previous = Some(name);
                }
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).map_err(write_err)?;
                // The view's directories get the store's mode (their mtime is not the store's:
                // a view built from the store does not copy it either).
                self.link_step(link, |to| std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o555)));
                set_mtime_nofollow(path).map_err(write_err)
            }
            other => Err(format(format!("unknown node type {:?}", String::from_utf8_lossy(other)))),
        }
    }
}

/// Copies exactly `len` bytes (a truncated source is `Read(UnexpectedEof)`).
fn copy_exact<R: Read>(r: &mut R, buf: &mut [u8], file: &mut File, len: u64, path: &Path) -> Result<u64, NarError> {
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = r.read(&mut buf[..want]).map_err(NarError::Read)?;
        if n == 0 {
            return Err(NarError::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        file.write_all(&buf[..n]).map_err(|source| NarError::Write { path: path.to_path_buf(), source })?;
        left -= n as u64;
    }
    Ok(len)
}

fn set_file_mtime(file: &File) -> io::Result<()> {
    let one = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
    file.set_times(std::fs::FileTimes::new().set_modified(one).set_accessed(one))
}

/// mtime (and atime) 1 on `path` itself, not what a symlink points to.
fn set_mtime_nofollow(path: &Path) -> io::Result<()> {
    let one = rustix::fs::Timespec { tv_sec: 1, tv_nsec: 0 };
    let times = rustix::fs::Timestamps { last_access: one, last_modification: one };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

/// Unpacks the NAR read from `r` at `dest` (which must not exist). Reads exactly the
/// archive: the caller checks that nothing follows it, and that it is `nar_size` bytes long
/// (no file in it can be longer, which bounds what is allocated before the bytes come).
pub fn unpack<R: Read>(r: &mut R, dest: &Path, nar_size: u64) -> Result<(), NarError> {
    let mut p = Parser { r, buf: vec![0u8; FILE_CHUNK], nar_size, linking: false };
    p.expect("nix-archive-1")?;
    p.expect("(")?;
    p.node(dest, None, 0)
}

/// [`unpack`], and as it goes a second tree at `link` (which must not exist) that holds the
/// same tree: its directories made again (mode 0555), its files and symlinks hard links to the
/// ones at `dest`. This is how a closure view gets a path it is built for during the pull, in
/// the same pass as the unpack, instead of walking the unpacked tree again afterwards.
///
/// `Ok(true)`: the second tree is complete. `Ok(false)`: a step of it failed (e.g. `link` is
/// on another file system) and it stopped; what it holds is partial. On `Ok(false)` and on
/// every error the caller removes whatever is at `link` (see [`remove_tree`]) along with
/// `dest`.
pub fn unpack_linked<R: Read>(r: &mut R, dest: &Path, nar_size: u64, link: &Path) -> Result<bool, NarError> {
    let mut p = Parser { r, buf: vec![0u8; FILE_CHUNK], nar_size, linking: true };
    p.expect("nix-archive-1")?;
    p.expect("(")?;
    p.node(dest, Some(link), 0)?;
    Ok(p.linking)
}

/// Removes a (possibly read-only) tree; missing is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if m.is_dir() => make_dirs_writable(path)?,
        Ok(_) => return std::fs::remove_file(path),
    }
    std::fs::remove_dir_all(path)
}

fn make_dirs_writable(dir: &Path) -> io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A NAR writer for tests (the real archives come from Nix in the integration tests).
    pub(crate) struct NarWriter(pub Vec<u8>);

    impl NarWriter {
        pub fn str(&mut self, s: &[u8]) -> &mut Self {
            self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
            self.0.extend_from_slice(s);
            self.0.resize(self.0.len() + (8 - s.len() % 8) % 8, 0);
            self
        }
        pub fn toks(&mut self, toks: &[&str]) -> &mut Self {
            for t in toks {
                self.str(t.as_bytes());
            }
            self
        }
    }

    fn sample(names: &[&str]) -> Vec<u8> {
        let mut w = NarWriter(vec![]);
        w.toks(&["nix-archive-1", "(", "type", "directory"]);
        for n in names {
            w.toks(&["entry", "(", "name", n, "node", "(", "type", "regular", "contents"]).str(b"hi\n");
            w.toks(&[")", ")"]);
        }
        w.toks(&["entry", "(", "name", "zbin", "node", "(", "type", "regular", "executable", "", "contents"]);
        w.str(b"#!/bin/sh\n").toks(&[")", ")"]);
        w.toks(&["entry", "(", "name", "zlink", "node", "(", "type", "symlink", "target", "/etc/passwd", ")", ")"]);
        w.toks(&[")"]);
        w.0
    }

    #[test]
    fn unpacks_with_nix_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let nar = sample(&["a", "b"]);
        unpack(&mut nar.as_slice(), &dest, nar.len() as u64).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"hi\n");
        assert_eq!(std::fs::metadata(dest.join("a")).unwrap().mode() & 0o777, 0o444);
        assert_eq!(std::fs::metadata(dest.join("zbin")).unwrap().mode() & 0o777, 0o555);
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o555);
        assert_eq!(std::fs::metadata(&dest).unwrap().mtime(), 1);
        assert_eq!(std::fs::read_link(dest.join("zlink")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(std::fs::symlink_metadata(dest.join("zlink")).unwrap().mtime(), 1);
        remove_tree(&dest).unwrap();
        assert!(!dest.exists());
    }

    #[test]
    fn refuses_bad_archives() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [(&["b", "a"][..], "out of order"), (&["a", "a"], "repeated"), (&[".."], "not allowed")];
        for (i, (names, want)) in cases.into_iter().enumerate() {
            let dest = tmp.path().join(format!("case{i}"));
            let nar = sample(names);
            match unpack(&mut nar.as_slice(), &dest, nar.len() as u64) {
                Err(NarError::Format(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{names:?}: {other:?}"),
            }
        }
        let nar = sample(&["a"]);
        let dest = tmp.path().join("short");
        match unpack(&mut &nar[..nar.len() - 9], &dest, nar.len() as u64) {
            Err(NarError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }

    /// A file that claims more bytes than the whole archive has is refused before anything
    /// is created for it (nothing is allocated on its word).
    #[test]
    fn refuses_a_file_longer_than_the_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = NarWriter(vec![]);
        w.toks(&["nix-archive-1", "(", "type", "directory", "entry", "(", "name", "big", "node", "("]);
        w.toks(&["type", "regular", "contents"]);
        w.0.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let dest = tmp.path().join("out");
        match unpack(&mut w.0.as_slice(), &dest, 4096) {
            Err(NarError::Format(m)) => assert_eq!(m, "a file of 1099511627776 bytes in an archive of 4096 bytes"),
            other => panic!("{other:?}"),
        }
        assert!(!dest.join("big").exists());
    }

    /// The second tree holds the same entries, its directories 0555, its files and symlinks
    /// the unpacked ones' inodes; when a step of it fails the unpack still completes.
    #[test]
    fn unpack_linked_makes_the_same_tree_of_hard_links() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let (dest, link) = (tmp.path().join("out"), tmp.path().join("view"));
        let nar = sample(&["a", "b"]);
        assert!(unpack_linked(&mut nar.as_slice(), &dest, nar.len() as u64, &link).unwrap());
        assert_eq!(std::fs::metadata(&link).unwrap().mode() & 0o777, 0o555);
        for name in ["a", "b", "zbin", "zlink"] {
            let (d, l) = (
                std::fs::symlink_metadata(dest.join(name)).unwrap(),
                std::fs::symlink_metadata(link.join(name)).unwrap(),
            );
            assert_eq!((d.ino(), d.nlink()), (l.ino(), 2), "{name}");
        }
        assert_eq!(std::fs::read_dir(&link).unwrap().count(), 4);

        let dest = tmp.path().join("out2");
        let nowhere = tmp.path().join("missing/view");
        assert!(!unpack_linked(&mut nar.as_slice(), &dest, nar.len() as u64, &nowhere).unwrap());
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"hi\n");
        assert!(!nowhere.exists());
    }

    /// A file large enough to be preallocated has exactly its contents and size.
    #[test]
    fn preallocated_files_have_their_exact_size() {
        let tmp = tempfile::tempdir().unwrap();
        let contents: Vec<u8> = (0..PREALLOCATE_FROM as usize * 5 + 13).map(|i| (i % 251) as u8).collect();
        let mut w = NarWriter(vec![]);
        w.toks(&["nix-archive-1", "(", "type", "regular", "contents"]).str(&contents).toks(&[")"]);
        let dest = tmp.path().join("file");
        unpack(&mut w.0.as_slice(), &dest, w.0.len() as u64).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), contents);
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), contents.len() as u64);
    }
}
