//! Serving one binary-cache file fast: a plain GET or HEAD (no Range, no `If-*`) is answered
//! from a single blocking task that opens the file beneath the cache directory (no symlink
//! anywhere below it, never a FIFO), checks it is a regular file, and reads it whole when it is
//! small (narinfos, most NARs) or its first chunk otherwise; the rest of a large file streams in
//! big chunks. Range and conditional requests still go to tower-http's `ServeFile` (206, 416,
//! 304, 412), after the same open has checked the file. The headers are the ones `ServeFile`
//! sends, so a client sees no difference between the two paths.
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Files up to this size are read in one go and sent as one body: every narinfo and most NARs.
/// With the global bound on requests in flight this also bounds the memory bodies hold.
pub const WHOLE_FILE_MAX: u64 = 1024 * 1024;
/// What a larger file is read in, per blocking task (tower-http reads 64 KiB per task).
pub const CHUNK: usize = 1024 * 1024;

/// Whether `ServeFile` must answer: a range or a precondition needs its logic; anything else is
/// a plain full answer the fast path gives.
pub fn needs_serve_file(headers: &HeaderMap) -> bool {
    headers.contains_key(header::RANGE) || headers.keys().any(|name| name.as_str().as_bytes().starts_with(b"if-"))
}

/// A cache file opened for serving.
pub struct Opened {
    file: File,
    len: u64,
    modified: Option<SystemTime>,
    /// The whole file (when `len <= WHOLE_FILE_MAX`) or its first [`CHUNK`]; empty when not read.
    first: Bytes,
}

/// What looking a cache path up found.
pub enum Lookup {
    Found(Opened),
    /// Nothing there (a pull-through hub may fetch it).
    Missing,
    /// Something that is not served: a directory, a symlink, a FIFO, a device.
    NotServed,
}

/// Opens `rel` (already checked by [`crate::cache::resolve_cache_path`]) beneath `cache`, and
/// with `read` also reads the whole file or its first chunk. Blocking: call it from
/// `spawn_blocking`.
pub fn open(cache: &Path, rel: &str, read: bool) -> std::io::Result<Lookup> {
    let dir = rustix::fs::open(cache, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    // BENEATH and NO_SYMLINKS: nothing below the cache directory may lead elsewhere; NONBLOCK:
    // opening a FIFO never waits for a writer (the type check below then refuses it).
    let opened = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    );
    let fd: OwnedFd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(Lookup::Missing),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::NXIO) => {
            return Ok(Lookup::NotServed)
        }
        Err(e) => return Err(e.into()),
    };
    let mut file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Lookup::NotServed);
    }
    let len = meta.len();
    let first = match read {
        false => Bytes::new(),
        true if len <= WHOLE_FILE_MAX => read_up_to(&mut file, len)?,
        true => read_up_to(&mut file, CHUNK as u64)?,
    };
    Ok(Lookup::Found(Opened { file, len, modified: meta.modified().ok(), first }))
}

/// [`open`] on a blocking thread.
pub async fn open_async(cache: &Path, rel: &str, read: bool) -> std::io::Result<Lookup> {
    let (cache, rel) = (cache.to_path_buf(), rel.to_owned());
    tokio::task::spawn_blocking(move || open(&cache, &rel, read))
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)))
}

/// Exactly `n` bytes from the file's current offset; an error when it ends before (it shrank
/// after `fstat`: the Content-Length sent would be a lie).
fn read_up_to(file: &mut File, n: u64) -> std::io::Result<Bytes> {
    let mut buf = Vec::with_capacity(n as usize);
    file.by_ref().take(n).read_to_end(&mut buf)?;
    if (buf.len() as u64) < n {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank while it was read"));
    }
    Ok(Bytes::from(buf))
}

impl Opened {
    /// The 200 answer to a plain GET (the body) or HEAD (headers only), with `ServeFile`'s headers.
    pub fn response(self, method: &Method, content_type: &'static str) -> Response {
        let body = if *method == Method::HEAD {
            Body::empty()
        } else if self.first.len() as u64 == self.len {
            Body::from(self.first)
        } else {
            stream_rest(self.file, self.first, self.len)
        };
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(modified) = self.modified {
            let date = httpdate::fmt_http_date(modified);
            headers.insert(header::LAST_MODIFIED, HeaderValue::from_str(&date).expect("HTTP dates are ASCII"));
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.len));
        response
    }
}

/// A large file's body: the chunk already read, then the rest in [`CHUNK`]s, each read by one
/// blocking task. A file that ends early ends the body with an error (the connection is closed,
/// the client sees a short body rather than wrong bytes).
fn stream_rest(file: File, first: Bytes, len: u64) -> Body {
    let remaining = len - first.len() as u64;
    let rest = futures_util::stream::unfold((Some(file), remaining), |(file, remaining)| async move {
        let mut file = file?;
        if remaining == 0 {
            return None;
        }
        let want = remaining.min(CHUNK as u64);
        let read = tokio::task::spawn_blocking(move || read_up_to(&mut file, want).map(|bytes| (file, bytes))).await;
        match read {
            Ok(Ok((file, bytes))) => Some((Ok(bytes), (Some(file), remaining - want))),
            Ok(Err(e)) => Some((Err(e), (None, 0))),
            Err(join) => Some((Err(std::io::Error::other(join)), (None, 0))),
        }
    });
    let first = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(first)));
    Body::from_stream(futures_util::StreamExt::chain(first, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(lookup: std::io::Result<Lookup>) -> Opened {
        match lookup.unwrap() {
            Lookup::Found(o) => o,
            Lookup::Missing => panic!("missing"),
            Lookup::NotServed => panic!("not served"),
        }
    }

    fn kind(lookup: std::io::Result<Lookup>) -> &'static str {
        match lookup.unwrap() {
            Lookup::Found(_) => "found",
            Lookup::Missing => "missing",
            Lookup::NotServed => "not served",
        }
    }

    #[test]
    fn plain_requests_only_take_the_fast_path() {
        let mut h = HeaderMap::new();
        assert!(!needs_serve_file(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(!needs_serve_file(&h));
        for name in [header::RANGE, header::IF_MODIFIED_SINCE, header::IF_NONE_MATCH, header::IF_RANGE] {
            let mut h = h.clone();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            assert!(needs_serve_file(&h), "{name}");
        }
    }

    #[test]
    fn what_is_found_and_what_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(cache.join("nar")).unwrap();
        std::fs::write(cache.join("a.narinfo"), "StorePath: x\n").unwrap();
        std::fs::write(dir.path().join("outside"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), cache.join("nar/link.nar")).unwrap();
        std::os::unix::fs::symlink(cache.join("a.narinfo"), cache.join("b.narinfo")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, cache.join("nar/fifo.nar"), rustix::fs::FileType::Fifo, Mode::RUSR, 0)
            .unwrap();

        let a = found(open(&cache, "a.narinfo", true));
        assert_eq!((a.len, &a.first[..]), (13, &b"StorePath: x\n"[..]));
        assert!(a.modified.is_some());
        assert!(found(open(&cache, "a.narinfo", false)).first.is_empty());
        assert_eq!(kind(open(&cache, "c.narinfo", true)), "missing");
        assert_eq!(kind(open(&cache, "a.narinfo/x", true)), "missing");
        // Links are never followed, even to a file in the cache; a FIFO is not waited on.
        assert_eq!(kind(open(&cache, "nar/link.nar", true)), "not served");
        assert_eq!(kind(open(&cache, "b.narinfo", true)), "not served");
        assert_eq!(kind(open(&cache, "nar/fifo.nar", true)), "not served");
        assert_eq!(kind(open(&cache, "nar", true)), "not served");
    }

    #[tokio::test]
    async fn a_large_file_streams_whole_and_head_has_no_body() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * CHUNK + 777;
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big.nar"), &bytes).unwrap();

        let opened = found(open(dir.path(), "big.nar", true));
        assert_eq!(opened.first.len(), CHUNK);
        let response = opened.response(&Method::GET, "application/x-nix-nar");
        assert_eq!(response.headers()[header::CONTENT_LENGTH], size.to_string());
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/x-nix-nar");
        assert_eq!(response.headers()[header::ACCEPT_RANGES], "bytes");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert!(body == bytes, "streamed body differs from the file");

        let head = found(open(dir.path(), "big.nar", false)).response(&Method::HEAD, "application/x-nix-nar");
        assert_eq!(head.headers()[header::CONTENT_LENGTH], size.to_string());
        assert!(axum::body::to_bytes(head.into_body(), usize::MAX).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_that_shrinks_after_fstat_ends_the_body_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.nar"), vec![7u8; 3 * CHUNK]).unwrap();
        let opened = found(open(dir.path(), "big.nar", true));
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("big.nar"))
            .unwrap()
            .set_len(CHUNK as u64 + 5)
            .unwrap();
        let response = opened.response(&Method::GET, "application/x-nix-nar");
        assert!(axum::body::to_bytes(response.into_body(), usize::MAX).await.is_err());
    }
}
