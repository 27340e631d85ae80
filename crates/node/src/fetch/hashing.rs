//! Counting and hashing the uncompressed NAR as it streams past, refusing to read past its
//! NarSize, so a hostile or broken cache cannot fill the disk or smuggle extra bytes.
use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// The error payload when the NAR goes past its NarSize.
#[derive(Debug)]
pub struct TooLong;

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NAR is longer than its NarSize")
    }
}

impl std::error::Error for TooLong {}

pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        HashingReader { inner, hasher: Sha256::new(), count: 0, limit }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// True when nothing follows what was read (reads at most one byte to check).
    pub fn at_end(&mut self) -> io::Result<bool> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn digest(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(TooLong));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hashes_and_bounds() {
        let mut r = HashingReader::new(&b"abcdef"[..], 6);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(r.count(), 6);
        assert!(r.at_end().unwrap());
        assert_eq!(hex::encode(r.digest()), "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721");
        let mut r = HashingReader::new(&b"abcdef"[..], 5);
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.get_ref().is_some_and(|e| e.is::<TooLong>()));
    }
}
