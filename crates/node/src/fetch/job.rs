//! Phase 2 of a fetch, for one path: take its lock, download the NAR, and in a blocking
//! thread decompress, count, hash and unpack it under a temporary name in the store, while
//! the download goes on; rename into place only when NarSize and NarHash match. Many such
//! jobs run at once (bounded), so download, decompression and unpacking overlap across paths.
//! A download that fails on the substituter's side (down, stalled, a corrupt or truncated
//! NAR) is discarded and the path is fetched from the next substituter that has it.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use imageless_core::store_path::StorePath;

use super::decompress::{decoder, Decoding};
use super::error::{Attempt, FetchError, SourceError};
use super::hashing::{HashingReader, TooLong};
use super::nar::{self, NarError};
use super::narinfo::{Compression, NarHash, NarInfo};
use super::pipe::{self, BodyFailed};
use super::progress::{Counting, Progress};
use super::store::{NodeStore, PathLock};
use super::walk::{Finder, Planned};

/// Decompressed bytes read ahead of the NAR parser (one such buffer per NAR in flight; 64 KiB
/// serves 8-byte tokens and file contents alike).
const UNPACK_BUFFER: usize = 64 * 1024;

/// What one job did: the record it published (None when another fetch had published the
/// path meanwhile).
pub struct Done {
    pub published: Option<NarInfo>,
    pub nar_bytes: u64,
    /// The path was also linked into the fetch's [`LinkSink`] while it was unpacked (or
    /// unpacked there alone, see [`LinkSink::deferring_store`]).
    pub linked: bool,
    /// The path's lock, still held: the path was unpacked into a sink that defers the store's
    /// own entry, which its holder makes later (see [`super::DeferredPath`]).
    pub held: Option<PathLock>,
}

/// A directory each fetched path is also linked into as it is unpacked (see
/// [`nar::unpack_linked`]): a closure view under construction, which then need not walk the
/// path's tree again. Linking is given up for the rest of the fetch once it fails (e.g. the
/// directory is on another file system than the store); the view then mirrors the path from
/// the store as before.
pub struct LinkSink {
    dir: PathBuf,
    usable: AtomicBool,
    defer_store: bool,
}

impl LinkSink {
    pub fn new(dir: PathBuf) -> LinkSink {
        LinkSink { dir, usable: AtomicBool::new(true), defer_store: false }
    }

    /// A sink each path is unpacked into alone: the store's own entry (the same tree, hard
    /// links to the sink's inodes) is left for later, and the path's lock stays held until
    /// then. A cold start then creates each directory once rather than twice (store and view)
    /// before its pod can start.
    pub fn deferring_store(dir: PathBuf) -> LinkSink {
        LinkSink { dir, usable: AtomicBool::new(true), defer_store: true }
    }

    /// Where `path` goes in the sink, while linking works.
    fn target(&self, path: &StorePath) -> Option<PathBuf> {
        self.usable.load(Ordering::Relaxed).then(|| self.dir.join(path.base_name()))
    }

    /// After a path's unpack at `link`: its tree there stays only when the path was published
    /// with the tree complete (`Some(true)`); a linking that failed (`Some(false)`) also stops
    /// linking for the rest of the fetch. `None`: the path failed.
    fn settle(&self, link: &Path, complete: Option<bool>) {
        if complete != Some(true) {
            let _ = nar::remove_tree(link);
        }
        if complete == Some(false) {
            self.usable.store(false, Ordering::Relaxed);
        }
    }
}

/// Why one download of a path failed: the substituter's fault (try the next one) or the
/// node's (stop).
enum Failed {
    Source(SourceError),
    Local(FetchError),
}

pub async fn fetch_one(
    finder: &Finder,
    store: &NodeStore,
    mut planned: Planned,
    cancel: &AtomicBool,
    progress: Option<Arc<dyn Progress>>,
    decoding: &Arc<Decoding>,
    sink: Option<&Arc<LinkSink>>,
) -> Result<Done, FetchError> {
    let path = planned.info.store_path.clone();
    let untouched = Done { published: None, nar_bytes: 0, linked: false, held: None };
    if cancel.load(Ordering::SeqCst) {
        return Ok(untouched);
    }
    let mut lock = {
        let (store, path) = (store.clone(), path.clone());
        tokio::task::spawn_blocking(move || store.lock(&path)).await.expect("lock task panicked")?
    };
    loop {
        if store.is_valid(&path) || cancel.load(Ordering::SeqCst) {
            return Ok(untouched);
        }
        if finder.sources.lost_standing(planned.source) {
            // Planned from a substituter that has since gone down or served corrupt NARs: the
            // best one now, if another has it with the same references.
            if let Ok(better) = finder.find(&path, BTreeSet::new(), Vec::new()).await {
                if better.source != planned.source && better.info.references == planned.info.references {
                    planned = Planned { attempts: planned.attempts, ..better };
                }
            }
        }
        let temp = store.fresh_temp(&path)?;
        let (outcome, returned) =
            download_and_unpack(finder, store, &planned, temp, lock, cancel, progress.clone(), decoding, sink).await;
        let error = match outcome {
            Ok((nar_bytes, linked)) => {
                finder.sources.served(planned.source, nar_bytes);
                tracing::debug!(path = %path, substituter = %planned.substituter, nar_bytes, "fetched");
                return Ok(Done { published: Some(planned.info), nar_bytes, linked, held: returned });
            }
            Err(Failed::Local(e)) => return Err(e),
            Err(Failed::Source(e)) => e,
        };
        lock = returned.expect("a failed download hands the path lock back");
        if cancel.load(Ordering::SeqCst) {
            return Ok(untouched);
        }
        // The next substituter that has the path, with the same references (the closure was
        // planned with them).
        finder.sources.failed(planned.source, path.as_str(), &error);
        let Planned { mut attempts, mut asked, info, source, .. } = planned;
        attempts.push(Attempt { substituter: finder.sources.url(source).to_string(), error });
        loop {
            let next = finder.find(&path, asked, attempts).await?;
            if next.info.references == info.references {
                planned = next;
                break;
            }
            (asked, attempts) = (next.asked, next.attempts);
            attempts.push(Attempt { substituter: next.substituter, error: SourceError::OtherReferences });
        }
        tracing::info!(path = %path, substituter = %planned.substituter, "fetching again from the next substituter");
    }
}

/// The blocking side owns the lock and the temporary tree while it runs, so whatever happens
/// to this future (an error elsewhere, an abort), the tree is either renamed into place after
/// every check passed or removed before the lock is released. On a failure the lock comes
/// back, for the next substituter's try. The same holds for the path's tree in the `sink`:
/// complete once the path is published, else removed. A sink that defers the store's entry
/// gets the only tree, the path's record is written once every check passed, and the lock
/// comes back held on success too.
#[allow(clippy::too_many_arguments)]
async fn download_and_unpack(
    finder: &Finder,
    store: &NodeStore,
    planned: &Planned,
    temp: PathBuf,
    lock: PathLock,
    cancel: &AtomicBool,
    progress: Option<Arc<dyn Progress>>,
    decoding: &Arc<Decoding>,
    sink: Option<&Arc<LinkSink>>,
) -> (Result<(u64, bool), Failed>, Option<PathLock>) {
    let http = &finder.http;
    let sub = planned.substituter.clone();
    let url = http.url(&sub, &planned.info.url);
    let mut resp = match http.get(&sub, &planned.info.url).await {
        Ok(Some(resp)) => resp,
        Ok(None) => return (Err(Failed::Source(SourceError::NotFound { url })), Some(lock)),
        Err(e) => return (Err(Failed::Source(e)), Some(lock)),
    };
    let (tx, reader) = pipe::channel();
    let info = planned.info.clone();
    let compression = planned.compression;
    let store = store.clone();
    let counted = Arc::new(AtomicU64::new(0));
    let rewind = progress.clone().map(|p| (p, counted.clone()));
    let decoding = decoding.clone();
    let sink = sink.cloned();
    let link = sink.as_ref().and_then(|sink| sink.target(&info.store_path));
    let deferred = link.is_some() && sink.as_ref().is_some_and(|sink| sink.defer_store);
    let unpacker = tokio::task::spawn_blocking(move || {
        let contexts = &decoding.zstd_contexts;
        // A kept zstd context for a zstd NAR only (other codecs need none).
        let mut zstd_context = (compression == Compression::Zstd).then(|| contexts.take());
        let result = decoder(compression, reader, zstd_context.as_mut())
            .map_err(|e| Failure::Read(e, 0))
            .map(|source| -> Box<dyn std::io::Read> {
                match progress {
                    Some(progress) => Box::new(Counting { inner: source, progress, counted }),
                    None => source,
                }
            })
            // The parser reads each NAR token in 8-byte pieces: served from a buffer, not by
            // a decoder (and progress) call each. It sits below the NarSize bound and hash,
            // which still see exactly the bytes the parser takes.
            .map(|source| std::io::BufReader::with_capacity(UNPACK_BUFFER, source))
            .and_then(|source| match (&link, deferred) {
                (Some(only), true) => {
                    unpack_checked(source, info.nar_size, &info.nar_hash, only, None).map(|(got, _)| (got, true))
                }
                _ => unpack_checked(source, info.nar_size, &info.nar_hash, &temp, link.as_deref()),
            })
            .and_then(|done| {
                let published = if deferred { store.write_record(&info) } else { store.publish(&info, &temp) };
                published.map(|()| done).map_err(Failure::Store)
            });
        if let Some(context) = zstd_context {
            contexts.give_back(context);
        }
        if result.is_err() {
            let _ = nar::remove_tree(&temp);
        }
        if let (Some(sink), Some(link)) = (&sink, &link) {
            sink.settle(link, result.as_ref().ok().map(|&(_, complete)| complete));
        }
        (result, lock)
    });
    let mut body_error = None;
    loop {
        if cancel.load(Ordering::SeqCst) {
            let detail = "cancelled: another path of the closure failed".to_string();
            let _ = tx.send(Err(detail.clone())).await;
            body_error = Some(SourceError::Network { url: url.clone(), detail });
            break;
        }
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // the unpacker stopped: its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                let failed = http.body_failed(&url, e);
                let _ = tx.send(Err(failed.to_string())).await;
                body_error = Some(failed);
                break;
            }
        }
    }
    drop(tx);
    let (outcome, lock) = unpacker.await.expect("unpack task panicked");
    let expected = planned.info.nar_size;
    let outcome = outcome.map_err(|failure| match (failure, body_error) {
        (Failure::Store(e), _) => Failed::Local(e),
        (Failure::Write { path: p, source }, _) => Failed::Local(FetchError::Store {
            dir: p.parent().map(Path::to_path_buf).unwrap_or_default(),
            what: format!("unpacking {}", p.display()),
            source,
        }),
        (_, Some(e)) => Failed::Source(e),
        (Failure::Read(e, got), None) => Failed::Source(classify_read(e, got, expected, &url, planned)),
        (Failure::Format(detail), None) => Failed::Source(SourceError::BadNar { detail }),
        (Failure::Trailing, None) => {
            Failed::Source(SourceError::BadNar { detail: "data follows the end of the archive".into() })
        }
        (Failure::Size(got), None) => Failed::Source(SourceError::NarSizeMismatch { expected, got }),
        (Failure::Hash(got), None) => {
            Failed::Source(SourceError::NarHashMismatch { expected: planned.info.nar_hash.to_nix(), got: got.to_nix() })
        }
    });
    if let (Err(_), Some((progress, counted))) = (&outcome, rewind) {
        progress.rewound(counted.load(Ordering::Relaxed));
    }
    let lock = (outcome.is_err() || deferred).then_some(lock);
    (outcome, lock)
}

fn classify_read(e: std::io::Error, got: u64, expected: u64, url: &str, planned: &Planned) -> SourceError {
    if e.get_ref().is_some_and(|i| i.is::<TooLong>()) {
        SourceError::NarTooLong { expected }
    } else if let Some(b) = e.get_ref().and_then(|i| i.downcast_ref::<BodyFailed>()) {
        SourceError::Network { url: url.to_string(), detail: b.0.clone() }
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
        SourceError::TruncatedNar { got, expected }
    } else {
        SourceError::Decompress { compression: planned.compression.as_str().into(), source: e }
    }
}

/// Why the blocking side failed (mapped to a [`FetchError`] by the async side, which knows
/// whether the download itself failed).
enum Failure {
    Read(std::io::Error, u64),
    Format(String),
    Write { path: PathBuf, source: std::io::Error },
    Trailing,
    Size(u64),
    Hash(NarHash),
    Store(FetchError),
}

/// Unpacks at `temp` (and links at `link`, see [`nar::unpack_linked`]) and checks size and
/// hash; returns the NAR's size and whether the tree at `link` is complete.
fn unpack_checked(
    source: impl std::io::Read,
    nar_size: u64,
    nar_hash: &NarHash,
    temp: &Path,
    link: Option<&Path>,
) -> Result<(u64, bool), Failure> {
    let mut hashing = HashingReader::new(source, nar_size);
    let unpacked = match link {
        Some(link) => nar::unpack_linked(&mut hashing, temp, nar_size, link),
        None => nar::unpack(&mut hashing, temp, nar_size).map(|()| false),
    };
    let linked = match unpacked {
        Ok(linked) => linked,
        Err(NarError::Read(e)) => return Err(Failure::Read(e, hashing.count())),
        Err(NarError::Format(m)) => return Err(Failure::Format(m)),
        Err(NarError::Write { path, source }) => return Err(Failure::Write { path, source }),
    };
    match hashing.at_end() {
        Ok(true) => {}
        Ok(false) => return Err(Failure::Trailing),
        Err(e) => return Err(Failure::Read(e, hashing.count())),
    }
    let got = hashing.count();
    if got != nar_size {
        return Err(Failure::Size(got));
    }
    let digest = NarHash(hashing.digest());
    if &digest != nar_hash {
        return Err(Failure::Hash(digest));
    }
    Ok((got, linked))
}
