//! How a fetch tells its caller what it is doing (e.g. `imageless pull`'s progress bar). The
//! fetch only calls a [`Progress`]; drawing is the caller's business.
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use imageless_core::store_path::StorePath;

/// An observer of one realization. Called from the fetch's threads, so cheap and `Sync`.
pub trait Progress: Send + Sync {
    /// The walk is done: `paths` store paths of `nar_bytes` (uncompressed) are to download.
    fn planned(&self, paths: usize, nar_bytes: u64);
    /// `bytes` more of some NAR were unpacked.
    fn advanced(&self, bytes: u64);
    /// `path` is in the node store (downloaded now, or by a concurrent fetch).
    fn path_done(&self, path: &StorePath);
    /// `path` is in the node store, downloaded now and also linked into the fetch's link
    /// directory while it was unpacked ([`super::Fetcher::linking_into`]): complete there too.
    fn path_linked(&self, path: &StorePath) {
        self.path_done(path);
    }
    /// A download that had advanced `bytes` was discarded (its substituter failed; the path
    /// is fetched again from another one).
    fn rewound(&self, bytes: u64) {
        let _ = bytes;
    }
    /// Called once the walk is done, before anything is downloaded: an `Err` stops the fetch
    /// with [`super::FetchError::Refused`] (its text as the error), having written nothing
    /// (the node cache refuses a pull that does not fit on the store's filesystem).
    fn admit(&self, paths: usize, nar_bytes: u64) -> Result<(), String> {
        let _ = (paths, nar_bytes);
        Ok(())
    }
}

/// A reader that reports what passes through it to a [`Progress`].
pub struct Counting<R> {
    pub inner: R,
    pub progress: Arc<dyn Progress>,
    /// What passed so far (to rewind a discarded download).
    pub counted: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advanced(n as u64);
        self.counted.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sum(AtomicU64);

    impl Progress for Sum {
        fn planned(&self, _: usize, _: u64) {}
        fn advanced(&self, bytes: u64) {
            self.0.fetch_add(bytes, Ordering::SeqCst);
        }
        fn path_done(&self, _: &StorePath) {}
    }

    #[test]
    fn counts_every_byte_read() {
        let sum = Arc::new(Sum::default());
        let mut r = Counting { inner: &[7u8; 10_000][..], progress: sum.clone(), counted: Arc::default() };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(sum.0.load(Ordering::SeqCst), 10_000);
    }
}
