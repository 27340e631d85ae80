//! Trusted public keys and narinfo signature checks (Nix's src/libutil/signature/local-keys.cc):
//! a narinfo is trusted when at least one `Sig` by a trusted key name verifies (ed25519 over
//! the fingerprint). Pure: no I/O.
use ed25519_dalek::{Signature, VerifyingKey};

use super::narinfo::NarInfo;

/// The node config's `trusted_public_keys`, parsed once.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

/// Why a narinfo is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    /// No `Sig` names a trusted key; carries the names it was signed by.
    UnknownKey { signers: Vec<String> },
    /// A `Sig` by this trusted key does not verify (and no other trusted one does).
    BadSignature { key: String },
}

impl TrustedKeys {
    /// Parses `<name>:<base64 of 32 bytes>` entries; Err names the bad entry.
    pub fn parse(entries: &[String]) -> Result<TrustedKeys, String> {
        use base64::Engine;
        let mut keys = Vec::new();
        for entry in entries {
            let (name, b64) = entry.split_once(':').filter(|(n, _)| !n.is_empty()).ok_or_else(|| entry.clone())?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| entry.clone())?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| entry.clone())?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| entry.clone())?;
            keys.push((name.to_string(), key));
        }
        Ok(TrustedKeys { keys })
    }

    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Ok when at least one signature by a trusted key verifies over the fingerprint.
    pub fn verify(&self, info: &NarInfo) -> Result<(), SigError> {
        let fingerprint = info.fingerprint();
        let mut bad = None;
        for (name, sig) in &info.sigs {
            for (key_name, key) in &self.keys {
                if key_name != name {
                    continue;
                }
                let ok = <[u8; 64]>::try_from(sig.as_slice())
                    .map(|b| key.verify_strict(fingerprint.as_bytes(), &Signature::from_bytes(&b)).is_ok())
                    .unwrap_or(false);
                if ok {
                    return Ok(());
                }
                bad.get_or_insert_with(|| name.clone());
            }
        }
        match bad {
            Some(key) => Err(SigError::BadSignature { key }),
            None => Err(SigError::UnknownKey { signers: info.sigs.iter().map(|(n, _)| n.clone()).collect() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::narinfo::NarHash;
    use base64::Engine;
    use ed25519_dalek::{Signer, SigningKey};
    use imageless_core::store_path::StorePath;

    fn info() -> NarInfo {
        NarInfo {
            store_path: StorePath::parse("/nix/store/0c1a6c3lzgpmk2k2ikr5wh1j7hnyh2fz-hello-2.12.1").unwrap(),
            url: "nar/x.nar".into(),
            compression: "none".into(),
            nar_hash: NarHash([7; 32]),
            nar_size: 8,
            references: vec![],
            deriver: None,
            sigs: vec![],
        }
    }

    #[test]
    fn verifies_only_trusted_good_signatures() {
        let sk = SigningKey::from_bytes(&[1; 32]);
        let public = format!("k-1:{}", base64::engine::general_purpose::STANDARD.encode(sk.verifying_key().as_bytes()));
        let keys = TrustedKeys::parse(&[public]).unwrap();
        let mut i = info();
        assert_eq!(keys.verify(&i), Err(SigError::UnknownKey { signers: vec![] }));
        let sig = sk.sign(i.fingerprint().as_bytes()).to_bytes().to_vec();
        i.sigs = vec![("other-1".into(), sig.clone())];
        assert_eq!(keys.verify(&i), Err(SigError::UnknownKey { signers: vec!["other-1".into()] }));
        i.sigs.push(("k-1".into(), sig.clone()));
        assert_eq!(keys.verify(&i), Ok(()));
        i.nar_size = 9;
        assert_eq!(keys.verify(&i), Err(SigError::BadSignature { key: "k-1".into() }));
        assert!(TrustedKeys::parse(&["nocolon".into()]).is_err());
        assert!(TrustedKeys::parse(&["k:AAAA".into()]).is_err());
    }
}
