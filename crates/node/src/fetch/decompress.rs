//! Decompression of a NAR as the cache serves it, while streaming (xz, zstd, bzip2, none).
//! The decoders read the compressed bytes where they already are (a [`BufRead`] over the
//! download's chunks), not from a copy in a buffer of their own.
use std::io::{self, BufRead, Read};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zstd::zstd_safe::{DCtx, ResetDirective};

use super::narinfo::Compression;

/// A reader of the uncompressed NAR over `compressed`; zstd decodes with `zstd_context` when
/// given (see [`ZstdContexts`]), else with a context of its own.
pub fn decoder<'a>(
    compression: Compression,
    compressed: impl BufRead + 'a,
    zstd_context: Option<&'a mut DCtx<'static>>,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match (compression, zstd_context) {
        (Compression::None, _) => Box::new(compressed),
        (Compression::Xz, _) => Box::new(liblzma::bufread::XzDecoder::new(compressed)),
        (Compression::Zstd, Some(context)) => Box::new(zstd::stream::read::Decoder::with_context(compressed, context)),
        (Compression::Zstd, None) => Box::new(zstd::stream::read::Decoder::with_buffer(compressed)?),
        (Compression::Bzip2, _) => Box::new(bzip2::bufread::BzDecoder::new(compressed)),
    })
}

/// What the NARs being decoded at once may hold, shared by a fetch's jobs: the budget of
/// uncompressed NAR bytes in decoders and the kept zstd contexts.
///
/// A decompressor holds a window as large as the NAR it reads (zstd: up to 8 MB, xz up to its
/// dictionary), so large NARs bound the pull's memory, not the job count. A job is admitted
/// before it asks for its NAR. Admitting it once the answer had begun (so that a NAR still
/// being asked for held none of the budget) kept the cores busier in a pull of `flox/xlarge`
/// (idle 170–220 against 260–310 ms of core time, 5 pulls each) but held about 2 MB more at
/// peak (51–54 against 48–53 MB: each waiting answer's first bytes sat in the HTTP client's
/// buffer), and the bench's peak RSS then reached 63.3 MB of its 64 MB limit.
pub struct Decoding {
    budget: Arc<Semaphore>,
    budget_kib: u32,
    pub zstd_contexts: ZstdContexts,
}

impl Decoding {
    pub fn new(budget_kib: u32, kept_contexts: usize) -> Decoding {
        Decoding {
            budget: Arc::new(Semaphore::new(budget_kib.max(1) as usize)),
            budget_kib: budget_kib.max(1),
            zstd_contexts: ZstdContexts::new(kept_contexts),
        }
    }

    /// Waits until a NAR of `nar_size` bytes may be decoded; a NAR larger than the whole
    /// budget waits for all of it (and goes alone).
    pub async fn admit(&self, nar_size: u64) -> OwnedSemaphorePermit {
        let kib = u32::try_from(nar_size.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.budget_kib);
        self.budget.clone().acquire_many_owned(kib).await.expect("the budget semaphore is never closed")
    }
}

/// zstd decoding contexts kept from one NAR to the next within a fetch. A context holds a
/// buffer as large as the frame's window (2 MB for what `nix copy` writes at its default
/// level); a fresh context per NAR gets fresh memory that faults in page by page as the NAR
/// is decoded: 116,000 page faults in a cold pull of `flox/xlarge` (1,045 NARs), about a
/// tenth of its system time. Kept, the next NAR decodes into pages already there. At most
/// one context per job is kept, so the memory this holds is bounded like the jobs.
pub struct ZstdContexts {
    kept: Mutex<Vec<DCtx<'static>>>,
    max: usize,
}

impl ZstdContexts {
    pub fn new(max: usize) -> ZstdContexts {
        ZstdContexts { kept: Mutex::new(Vec::new()), max }
    }

    /// A context ready for a new frame: a kept one (whatever its last frame left is reset) or
    /// a new one.
    pub fn take(&self) -> DCtx<'static> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match kept {
            Some(mut context) => {
                // Only fails for a parameter reset; a session reset always succeeds.
                let _ = context.reset(ResetDirective::SessionOnly);
                context
            }
            None => DCtx::create(),
        }
    }

    /// Gives a context back for the next NAR (dropped when `max` are kept).
    pub fn give_back(&self, context: DCtx<'static>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < self.max {
            kept.push(context);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn round_trips_each_compression() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(data.as_slice(), 3).unwrap();
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let contexts = ZstdContexts::new(1);
        for (c, bytes) in [
            (Compression::None, data.clone()),
            (Compression::Xz, xz),
            (Compression::Zstd, zst),
            (Compression::Bzip2, bz),
        ] {
            for pooled in [false, true] {
                let mut context = contexts.take();
                let mut out = Vec::new();
                decoder(c, bytes.as_slice(), pooled.then_some(&mut context)).unwrap().read_to_end(&mut out).unwrap();
                assert_eq!(out, data, "{c:?}");
                contexts.give_back(context);
            }
        }
    }

    /// The budget admits small NARs side by side, a NAR larger than all of it alone, and
    /// whoever waited once a permit is dropped.
    #[test]
    fn the_budget_admits_by_size_and_a_large_nar_alone() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let decoding = Decoding::new(8 * 1024, 1);
            let wait = std::time::Duration::from_millis(20);
            let a = decoding.admit(3 << 20).await;
            let b = decoding.admit(3 << 20).await;
            assert!(tokio::time::timeout(wait, decoding.admit(3 << 20)).await.is_err(), "9 MiB > 8 MiB");
            drop(a);
            let c = tokio::time::timeout(wait, decoding.admit(3 << 20)).await.expect("room again");
            drop((b, c));
            let huge = decoding.admit(100 << 20).await;
            assert!(tokio::time::timeout(wait, decoding.admit(1)).await.is_err(), "a huge NAR goes alone");
            drop(huge);
            assert!(tokio::time::timeout(wait, decoding.admit(0)).await.is_ok());
        });
    }

    /// A context given back after a frame that stopped half-way (a truncated or failed NAR)
    /// decodes the next NAR from its start.
    #[test]
    fn a_kept_context_starts_the_next_nar_afresh() {
        let first: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 13).to_le_bytes()).collect();
        let second: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 7).to_le_bytes()).collect();
        let (a, b) = (zstd::encode_all(first.as_slice(), 3).unwrap(), zstd::encode_all(second.as_slice(), 3).unwrap());
        let contexts = ZstdContexts::new(1);
        let mut context = contexts.take();
        let mut half = vec![0u8; 1000];
        decoder(Compression::Zstd, &a[..a.len() / 2], Some(&mut context)).unwrap().read_exact(&mut half).unwrap();
        contexts.give_back(context);
        let mut context = contexts.take();
        let mut out = Vec::new();
        decoder(Compression::Zstd, b.as_slice(), Some(&mut context)).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, second);
        let mut context = contexts.take();
        assert!(decoder(Compression::Zstd, &a[..a.len() / 2], Some(&mut context))
            .unwrap()
            .read_to_end(&mut Vec::new())
            .is_err());
    }
}
