//! Decompression of a NAR as the cache serves it, while streaming (xz, zstd, bzip2, none).
use std::io::{self, Read};

use super::narinfo::Compression;

/// A reader of the uncompressed NAR over `compressed`.
pub fn decoder<'a>(compression: Compression, compressed: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(compressed),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(compressed)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(compressed)?),
        Compression::Bzip2 => Box::new(bzip2::read::BzDecoder::new(compressed)),
    })
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
        for (c, bytes) in [
            (Compression::None, data.clone()),
            (Compression::Xz, xz),
            (Compression::Zstd, zst),
            (Compression::Bzip2, bz),
        ] {
            let mut out = Vec::new();
            decoder(c, bytes.as_slice()).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{c:?}");
        }
    }
}
