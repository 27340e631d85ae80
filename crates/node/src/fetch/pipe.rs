//! The bridge from the async download to the blocking decompress-and-unpack thread: a
//! bounded channel of body chunks read as a `std::io::Read`. Bounded so a slow disk slows
//! the download instead of buffering the NAR in memory.
use std::io::{self, Read};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunks in flight per NAR.
pub const DEPTH: usize = 16;

/// The download side says why the body stopped, if it failed.
pub type Chunk = Result<Bytes, String>;

pub fn channel() -> (mpsc::Sender<Chunk>, ChannelReader) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (tx, ChannelReader { rx, current: Bytes::new() })
}

/// Reads chunks until the sender is dropped (end of body).
pub struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
}

/// The error payload when the download failed mid-body.
#[derive(Debug)]
pub struct BodyFailed(pub String);

impl std::fmt::Display for BodyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "download failed: {}", self.0)
    }
}

impl std::error::Error for BodyFailed {}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(io::Error::other(BodyFailed(e))),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
