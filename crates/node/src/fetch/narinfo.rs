//! The `.narinfo` text format (Nix's src/libstore/nar-info.cc): parsing and checking what a
//! client relies on. Pure: no I/O.
use imageless_core::store_path::{StorePath, STORE_DIR};

/// A sha256 over the uncompressed NAR, as `sha256:<nix32>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarHash(pub [u8; 32]);

impl NarHash {
    /// Parses `sha256:<52 nix32 chars>` (the only form caches publish for NarHash).
    pub fn parse(value: &str) -> Result<NarHash, String> {
        let digits = value.strip_prefix("sha256:").ok_or_else(|| format!("NarHash {value:?} is not sha256:<nix32>"))?;
        if digits.len() != 52 {
            return Err(format!("NarHash {value:?} does not have 52 nix32 digits"));
        }
        let bytes =
            nix_base32::from_nix_base32(digits).ok_or_else(|| format!("NarHash {value:?} is not valid nix32"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| format!("NarHash {value:?} is not 32 bytes"))?;
        Ok(NarHash(bytes))
    }

    /// `sha256:<nix32>`, as in the narinfo and the signed fingerprint.
    pub fn to_nix(&self) -> String {
        format!("sha256:{}", nix_base32::to_nix_base32(&self.0))
    }
}

/// How the NAR file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
}

impl Compression {
    pub fn parse(value: &str) -> Option<Compression> {
        match value {
            "none" => Some(Compression::None),
            "xz" => Some(Compression::Xz),
            "zstd" => Some(Compression::Zstd),
            "bzip2" => Some(Compression::Bzip2),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }
}

/// A parsed narinfo. `compression` stays text until the fetch, so an unsupported one is
/// reported as such (not as a malformed narinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    pub url: String,
    pub compression: String,
    pub nar_hash: NarHash,
    pub nar_size: u64,
    /// Full store paths, sorted, deduplicated (may include the path itself).
    pub references: Vec<StorePath>,
    pub deriver: Option<String>,
    /// `(key name, signature bytes)` of every `Sig:` line.
    pub sigs: Vec<(String, Vec<u8>)>,
}

impl NarInfo {
    /// Parses a narinfo served for `expected` and checks it describes that path.
    pub fn parse(text: &str, expected: &StorePath) -> Result<NarInfo, String> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut sigs = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(": ").ok_or_else(|| format!("line {line:?} is not `Key: value`"))?;
            match key {
                "StorePath" => store_path = Some(value),
                "URL" => url = Some(value),
                "Compression" => compression = Some(value),
                "NarHash" => nar_hash = Some(NarHash::parse(value)?),
                "NarSize" => {
                    nar_size = Some(value.parse::<u64>().map_err(|_| format!("NarSize {value:?} is not a number"))?)
                }
                "References" => references = Some(value),
                "Deriver" => deriver = Some(value.to_string()),
                "Sig" => {
                    let (name, b64) =
                        value.split_once(':').ok_or_else(|| format!("Sig {value:?} is not <key-name>:<base64>"))?;
                    use base64::Engine;
                    let sig = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| format!("Sig {value:?} is not valid base64"))?;
                    sigs.push((name.to_string(), sig));
                }
                _ => {}
            }
        }
        let store_path = store_path.ok_or("no StorePath")?;
        if store_path != expected.as_str() {
            return Err(format!("StorePath is {store_path}, expected {expected}"));
        }
        let url = url.ok_or("no URL")?;
        // The URL is relative to the cache root; refuse anything that could leave it.
        if url.is_empty() || url.starts_with('/') || url.contains("..") || url.contains("://") || url.contains('?') {
            return Err(format!("URL {url:?} is not a relative path inside the cache"));
        }
        let mut refs = Vec::new();
        for base in references.unwrap_or("").split(' ').filter(|s| !s.is_empty()) {
            let full = format!("{STORE_DIR}/{base}");
            refs.push(StorePath::parse(&full).map_err(|e| format!("reference {base:?}: {e}"))?);
        }
        refs.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        refs.dedup();
        Ok(NarInfo {
            store_path: expected.clone(),
            url: url.to_string(),
            // Nix's default when absent (old caches).
            compression: compression.unwrap_or("bzip2").to_string(),
            nar_hash: nar_hash.ok_or("no NarHash")?,
            nar_size: nar_size.ok_or("no NarSize")?,
            references: refs,
            deriver,
            sigs,
        })
    }

    /// Nix's fingerprint v1 (src/libstore/path-info.cc), the bytes a `Sig` signs.
    pub fn fingerprint(&self) -> String {
        let refs: Vec<&str> = self.references.iter().map(StorePath::as_str).collect();
        format!("1;{};{};{};{}", self.store_path, self.nar_hash.to_nix(), self.nar_size, refs.join(","))
    }

    /// The narinfo text as the node store keeps it (only what was verified, plus the sigs).
    pub fn to_text(&self) -> String {
        use base64::Engine;
        let mut s = format!(
            "StorePath: {}\nURL: {}\nCompression: {}\nNarHash: {}\nNarSize: {}\nReferences: {}\n",
            self.store_path,
            self.url,
            self.compression,
            self.nar_hash.to_nix(),
            self.nar_size,
            self.references.iter().map(StorePath::base_name).collect::<Vec<_>>().join(" ")
        );
        if let Some(d) = &self.deriver {
            s.push_str(&format!("Deriver: {d}\n"));
        }
        for (name, sig) in &self.sigs {
            s.push_str(&format!("Sig: {name}:{}\n", base64::engine::general_purpose::STANDARD.encode(sig)));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "/nix/store/0c1a6c3lzgpmk2k2ikr5wh1j7hnyh2fz-hello-2.12.1";
    const TEXT: &str = "StorePath: /nix/store/0c1a6c3lzgpmk2k2ikr5wh1j7hnyh2fz-hello-2.12.1
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz
Compression: xz
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
FileSize: 50088
NarHash: sha256:0yzhigwjl6bws649vcs2asa4lbs8hg93hyix187gc7s7a74w5h80
NarSize: 226488
References: 0c1a6c3lzgpmk2k2ikr5wh1j7hnyh2fz-hello-2.12.1 3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8
Deriver: xxkgrwxw1mjbd3bjyhg4fhg7zbrvsw4q-hello-2.12.1.drv
Sig: cache.nixos.org-1:MVBkLyt4c4EHgtEWV3+PoNcHoSAqO8h1JnVmNkQp/fvIZ3lKddNlbSiqY8n3K6PY1ZSjt2NQbMWjl5EcLIa0Bg==
";

    #[test]
    fn parses_and_fingerprints() {
        let p = StorePath::parse(HELLO).unwrap();
        let n = NarInfo::parse(TEXT, &p).unwrap();
        assert_eq!(n.nar_size, 226488);
        assert_eq!(n.compression, "xz");
        assert_eq!(n.nar_hash.to_nix(), "sha256:0yzhigwjl6bws649vcs2asa4lbs8hg93hyix187gc7s7a74w5h80");
        assert_eq!(n.sigs.len(), 1);
        assert_eq!(n.sigs[0].1.len(), 64);
        assert_eq!(
            n.fingerprint(),
            "1;/nix/store/0c1a6c3lzgpmk2k2ikr5wh1j7hnyh2fz-hello-2.12.1;\
             sha256:0yzhigwjl6bws649vcs2asa4lbs8hg93hyix187gc7s7a74w5h80;226488;\
             /nix/store/0c1a6c3lzgpmk2k2ikr5wh1j7hnyh2fz-hello-2.12.1,\
             /nix/store/3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8"
        );
        let again = NarInfo::parse(&n.to_text(), &p).unwrap();
        assert_eq!(again, n);
    }

    #[test]
    fn refuses_bad_narinfos() {
        let p = StorePath::parse(HELLO).unwrap();
        let other = StorePath::parse("/nix/store/3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8").unwrap();
        assert!(NarInfo::parse(TEXT, &other).unwrap_err().contains("StorePath is"));
        let e = NarInfo::parse(&TEXT.replace("NarSize: 226488", "NarSize: x"), &p).unwrap_err();
        assert!(e.contains("NarSize"), "{e}");
        let e = NarInfo::parse(&TEXT.replace("URL: nar/", "URL: ../"), &p).unwrap_err();
        assert!(e.contains("URL"), "{e}");
        let e = NarInfo::parse(&TEXT.replace("sha256:0yzh", "md5:0yzh"), &p).unwrap_err();
        assert!(e.contains("NarHash"), "{e}");
        let e = NarInfo::parse(&TEXT.replace("3n58xw4373jp0ljirf06d8077j15pc4j-glibc", "bad/ref"), &p).unwrap_err();
        assert!(e.contains("reference"), "{e}");
    }
}
