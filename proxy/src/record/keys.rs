//! The ed25519 key that signs audit checkpoints: loading it (PKCS#8 PEM or a raw 32-byte seed),
//! generating it when the config allows, and loading a key to verify with.
//!
//! Owns: key file formats. Must never: put key material into an error or a log line, or write a
//! key file readable by others.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn key_err(path: &Path, message: impl Into<String>) -> KeyError {
    KeyError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Loads the signing key; when the file is missing and `generate` is set, creates one (PKCS#8
/// PEM, mode 0600).
pub fn load_or_generate_signing_key(path: &Path, generate: bool) -> Result<SigningKey, KeyError> {
    match std::fs::read(path) {
        Ok(bytes) => parse_signing_key(&bytes).map_err(|m| key_err(path, m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => generate_key_file(path),
        Err(e) => Err(key_err(path, e.to_string())),
    }
}

fn parse_signing_key(bytes: &[u8]) -> Result<SigningKey, String> {
    if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes).map_err(|_| "PEM file is not UTF-8".to_string())?;
        return SigningKey::from_pkcs8_pem(text)
            .map_err(|_| "not an ed25519 PKCS#8 private key (\"PRIVATE KEY\" PEM)".to_string());
    }
    let seed: [u8; 32] = bytes.try_into().map_err(|_| {
        format!(
            "expected a PKCS#8 PEM file or a raw 32-byte seed, found {} bytes",
            bytes.len()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn generate_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| key_err(path, format!("no randomness: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|_| key_err(path, "cannot encode the generated key"))?;
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| key_err(path, e.to_string()))?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| key_err(path, e.to_string()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| key_err(path, e.to_string()))?;
    tracing::info!(path = %path.display(), "generated a new audit checkpoint signing key");
    Ok(key)
}

/// A key to verify checkpoints with: a public key PEM ("PUBLIC KEY"), or the signing key file
/// itself (PEM or raw seed), whose public half is used.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = std::fs::read(path).map_err(|e| key_err(path, e.to_string()))?;
    if bytes.starts_with(b"-----BEGIN PUBLIC KEY") {
        let text = std::str::from_utf8(&bytes).map_err(|_| key_err(path, "not UTF-8"))?;
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|_| key_err(path, "not an ed25519 public key"));
    }
    parse_signing_key(&bytes)
        .map(|k| k.verifying_key())
        .map_err(|m| key_err(path, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_loads_the_same_key_in_every_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/audit.pem");
        assert!(load_or_generate_signing_key(&path, false).is_err());
        let generated = load_or_generate_signing_key(&path, true).unwrap();
        let again = load_or_generate_signing_key(&path, true).unwrap();
        assert_eq!(generated.to_bytes(), again.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
        assert_eq!(
            load_verifying_key(&path).unwrap(),
            generated.verifying_key()
        );

        let raw = dir.path().join("seed");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        let from_seed = load_or_generate_signing_key(&raw, false).unwrap();
        assert_eq!(from_seed.to_bytes(), [7u8; 32]);

        let bad = dir.path().join("bad");
        std::fs::write(&bad, [7u8; 31]).unwrap();
        let err = load_or_generate_signing_key(&bad, true).unwrap_err();
        assert!(err.to_string().contains("31 bytes"), "{err}");
    }
}
