//! The bridge from the async download to the blocking decompress-and-unpack thread: a
//! bounded channel of body chunks read as a `std::io::Read`. Bounded so a slow disk slows
//! the download instead of buffering the NAR in memory. It is also a `BufRead` whose buffer is
//! the chunk as the download received it, so a decoder reads the compressed bytes in place.
use std::io::{self, BufRead, Read};

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
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader {
    /// The rest of the current chunk, or the next one (empty at the end of the body).
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(io::Error::other(BodyFailed(e))),
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        bytes::Buf::advance(&mut self.current, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks read in place and by copy, across chunk boundaries; a failed download is an
    /// error after the bytes that came before it.
    #[test]
    fn reads_chunks_in_place_then_the_failure() {
        let (tx, mut reader) = channel();
        for chunk in [&b"abc"[..], b"", b"defg"] {
            tx.try_send(Ok(Bytes::from_static(chunk))).unwrap();
        }
        tx.try_send(Err("reset".into())).unwrap();
        drop(tx);
        assert_eq!(reader.fill_buf().unwrap(), b"abc");
        reader.consume(2);
        let mut two = [0u8; 2];
        reader.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"cd", "a read goes on into the next non-empty chunk");
        assert_eq!(reader.fill_buf().unwrap(), b"efg");
        reader.consume(3);
        let e = reader.fill_buf().unwrap_err();
        assert_eq!(e.to_string(), "download failed: reset");
        let (tx, mut reader) = channel();
        drop(tx);
        assert!(reader.fill_buf().unwrap().is_empty(), "end of body");
    }
}
