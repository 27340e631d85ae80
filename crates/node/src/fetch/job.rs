//! Phase 2 of a fetch, for one path: take its lock, download the NAR, and in a blocking
//! thread decompress, count, hash and unpack it under a temporary name in the store, while
//! the download goes on; rename into place only when NarSize and NarHash match. Many such
//! jobs run at once (bounded), so download, decompression and unpacking overlap across paths.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::decompress::decoder;
use super::error::FetchError;
use super::hashing::{HashingReader, TooLong};
use super::http::{error_chain, Http};
use super::nar::{self, NarError};
use super::narinfo::NarHash;
use super::pipe::{self, BodyFailed};
use super::progress::{Counting, Progress};
use super::store::{NodeStore, PathLock};
use super::walk::Planned;

/// Decompressed bytes read ahead of the NAR parser.
const UNPACK_BUFFER: usize = 256 * 1024;

/// What one job did: false when another fetch had published the path meanwhile.
pub struct Done {
    pub downloaded: bool,
    pub nar_bytes: u64,
}

pub async fn fetch_one(
    http: &Http,
    store: &NodeStore,
    planned: Planned,
    cancel: &AtomicBool,
    progress: Option<Arc<dyn Progress>>,
) -> Result<Done, FetchError> {
    let path = planned.info.store_path.clone();
    if cancel.load(Ordering::SeqCst) {
        return Ok(Done { downloaded: false, nar_bytes: 0 });
    }
    let lock = {
        let (store, path) = (store.clone(), path.clone());
        tokio::task::spawn_blocking(move || store.lock(&path)).await.expect("lock task panicked")?
    };
    if store.is_valid(&path) || cancel.load(Ordering::SeqCst) {
        return Ok(Done { downloaded: false, nar_bytes: 0 });
    }
    let temp = store.fresh_temp(&path)?;
    let nar_bytes = download_and_unpack(http, store, &planned, temp, lock, cancel, progress).await?;
    tracing::debug!(path = %path, substituter = %planned.substituter, nar_bytes, "fetched");
    Ok(Done { downloaded: true, nar_bytes })
}

/// The blocking side owns the lock, the temporary tree and the publishing, so whatever
/// happens to this future (an error elsewhere, an abort), the tree is either renamed into
/// place after every check passed or removed, and only then is the lock released.
async fn download_and_unpack(
    http: &Http,
    store: &NodeStore,
    planned: &Planned,
    temp: PathBuf,
    lock: PathLock,
    cancel: &AtomicBool,
    progress: Option<Arc<dyn Progress>>,
) -> Result<u64, FetchError> {
    let sub = planned.substituter.clone();
    let url = format!("{}/{}", sub.trim_end_matches('/'), planned.info.url);
    let path = planned.info.store_path.to_string();
    let Some(mut resp) = http.get(&sub, &planned.info.url).await? else {
        return Err(FetchError::Http { substituter: sub, url, status: 404 });
    };
    let (tx, reader) = pipe::channel();
    let info = planned.info.clone();
    let compression = planned.compression;
    let store = store.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        let result = decoder(compression, reader)
            .map_err(|e| Failure::Read(e, 0))
            .map(|source| -> Box<dyn std::io::Read> {
                match progress {
                    Some(progress) => Box::new(Counting { inner: source, progress }),
                    None => source,
                }
            })
            // The parser reads each NAR token in 8-byte pieces: served from a buffer, not by
            // a decoder (and progress) call each. It sits below the NarSize bound and hash,
            // which still see exactly the bytes the parser takes.
            .map(|source| std::io::BufReader::with_capacity(UNPACK_BUFFER, source))
            .and_then(|source| unpack_checked(source, info.nar_size, &info.nar_hash, &temp))
            .and_then(|bytes| store.publish(&info, &temp).map(|()| bytes).map_err(Failure::Store));
        if result.is_err() {
            let _ = nar::remove_tree(&temp);
        }
        drop(lock);
        result
    });
    let mut body_error = None;
    loop {
        if cancel.load(Ordering::SeqCst) {
            body_error = Some("cancelled: another path of the closure failed".to_string());
            let _ = tx.send(Err(body_error.clone().unwrap_or_default())).await;
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
                let detail = error_chain(&e);
                let _ = tx.send(Err(detail.clone())).await;
                body_error = Some(detail);
                break;
            }
        }
    }
    drop(tx);
    let outcome = unpacker.await.expect("unpack task panicked");
    let expected = planned.info.nar_size;
    outcome.map_err(|failure| match (failure, body_error) {
        (Failure::Store(e), _) => e,
        (_, Some(detail)) => FetchError::Network { substituter: sub.clone(), url: url.clone(), detail },
        (Failure::Read(e, got), None) => classify_read(e, got, expected, &sub, &url, &path, planned),
        (Failure::Format(detail), None) => FetchError::BadNar { substituter: sub.clone(), path: path.clone(), detail },
        (Failure::Write { path: p, source }, None) => FetchError::Store {
            dir: p.parent().map(Path::to_path_buf).unwrap_or_default(),
            what: format!("unpacking {}", p.display()),
            source,
        },
        (Failure::Trailing, None) => FetchError::BadNar {
            substituter: sub.clone(),
            path: path.clone(),
            detail: "data follows the end of the archive".into(),
        },
        (Failure::Size(got), None) => {
            FetchError::NarSizeMismatch { substituter: sub.clone(), path: path.clone(), expected, got }
        }
        (Failure::Hash(got), None) => FetchError::NarHashMismatch {
            substituter: sub.clone(),
            path: path.clone(),
            expected: planned.info.nar_hash.to_nix(),
            got: got.to_nix(),
        },
    })
}

fn classify_read(
    e: std::io::Error,
    got: u64,
    expected: u64,
    sub: &str,
    url: &str,
    path: &str,
    planned: &Planned,
) -> FetchError {
    let (sub, path) = (sub.to_string(), path.to_string());
    if e.get_ref().is_some_and(|i| i.is::<TooLong>()) {
        FetchError::NarTooLong { substituter: sub, path, expected }
    } else if let Some(b) = e.get_ref().and_then(|i| i.downcast_ref::<BodyFailed>()) {
        FetchError::Network { substituter: sub, url: url.to_string(), detail: b.0.clone() }
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FetchError::TruncatedNar { substituter: sub, path, got, expected }
    } else {
        FetchError::Decompress { substituter: sub, path, compression: planned.compression.as_str().into(), source: e }
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

/// Unpacks at `temp` and checks size and hash; returns the NAR's size.
fn unpack_checked(source: impl std::io::Read, nar_size: u64, nar_hash: &NarHash, temp: &Path) -> Result<u64, Failure> {
    let mut hashing = HashingReader::new(source, nar_size);
    match nar::unpack(&mut hashing, temp) {
        Ok(()) => {}
        Err(NarError::Read(e)) => return Err(Failure::Read(e, hashing.count())),
        Err(NarError::Format(m)) => return Err(Failure::Format(m)),
        Err(NarError::Write { path, source }) => return Err(Failure::Write { path, source }),
    }
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
    Ok(got)
}
