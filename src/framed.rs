//! The one container format for everything this program persists as numbers
//! (embedding caches, trained heads).
//!
//! Layout: a magic line `"<kind> <version>\n"`, one line of JSON metadata, a payload of
//! little-endian `f32`, then the 32-byte SHA-256 of everything before it. The JSON says how
//! long the payload is, so a truncated or bit-flipped file is always detected and never used.
//! Must not: know what the numbers mean (callers own their metadata schema).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why a framed file could not be read. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not of the expected kind or version.
    #[error(
        "{path} is not a {kind} file version {version} (starts with {found:?}); was it made by another program or version?"
    )]
    WrongKind {
        /// File involved.
        path: PathBuf,
        /// Expected kind.
        kind: &'static str,
        /// Expected version.
        version: u32,
        /// What the first line said.
        found: String,
    },
    /// Checksum mismatch, truncation, or malformed structure.
    #[error("{path} is corrupt ({why}); delete it and recreate it")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// Serialise: magic line, JSON line, f32 payload, SHA-256 trailer.
pub fn encode(kind: &str, version: u32, meta: &serde_json::Value, payload: &[f32]) -> Vec<u8> {
    let mut out = format!("{kind} {version}\n").into_bytes();
    out.extend_from_slice(meta.to_string().as_bytes());
    out.push(b'\n');
    out.reserve(payload.len() * 4 + 32);
    for v in payload {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// The metadata field `key` as a `usize`, if it is a whole number this machine can index
/// with: on a 32-bit board a huge value is refused, never wrapped around.
pub fn meta_usize(meta: &serde_json::Value, key: &str) -> Option<usize> {
    meta[key].as_u64().and_then(|v| usize::try_from(v).ok())
}

/// Parse and verify bytes produced by [`encode`]. `payload_len` is computed by the caller
/// from the metadata and checked against the bytes present (so no separate size cap is
/// needed: a length that does not match the file is refused).
pub fn decode(
    path: &Path,
    bytes: &[u8],
    kind: &'static str,
    version: u32,
    payload_len: impl FnOnce(&serde_json::Value) -> Result<usize, String>,
) -> Result<(serde_json::Value, Vec<f32>), FramedError> {
    let corrupt = |why: String| FramedError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let magic = format!("{kind} {version}\n");
    if !bytes.starts_with(magic.as_bytes()) {
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len())
            .min(40);
        return Err(FramedError::WrongKind {
            path: path.to_path_buf(),
            kind,
            version,
            found: String::from_utf8_lossy(&bytes[..end]).into_owned(),
        });
    }
    if bytes.len() < magic.len() + 32 {
        return Err(corrupt("file is truncated".into()));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(corrupt("checksum mismatch: truncated or modified".into()));
    }
    let rest = &body[magic.len()..];
    let nl = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("metadata line is not terminated".into()))?;
    let meta: serde_json::Value = serde_json::from_slice(&rest[..nl])
        .map_err(|e| corrupt(format!("metadata is not JSON: {e}")))?;
    let data = &rest[nl + 1..];
    let n = payload_len(&meta).map_err(corrupt)?;
    if Some(data.len()) != n.checked_mul(4) {
        return Err(corrupt(format!(
            "payload is {} bytes, metadata says {}",
            data.len(),
            n.saturating_mul(4)
        )));
    }
    let payload = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((meta, payload))
}

/// Largest framed file read (an embedding cache of 100 000 images at 1280 dimensions is
/// 512 MB); a larger or endless file is refused before it fills memory.
pub const MAX_FILE: u64 = 1 << 31;

/// Read a file of at most `max` bytes (see [`crate::fsutil::read_bounded`]).
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, FramedError> {
    crate::fsutil::read_bounded(path, max).map_err(|source| FramedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Read a file (at most `max` bytes) and [`decode`] it.
pub fn read(
    path: &Path,
    max: u64,
    kind: &'static str,
    version: u32,
    payload_len: impl FnOnce(&serde_json::Value) -> Result<usize, String>,
) -> Result<(serde_json::Value, Vec<f32>), FramedError> {
    let bytes = read_file(path, max)?;
    decode(path, &bytes, kind, version, payload_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn len_from_meta(m: &serde_json::Value) -> Result<usize, String> {
        m["n"]
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| "no n".to_string())
    }

    #[test]
    fn round_trip() {
        let bytes = encode("t", 3, &json!({"n": 3}), &[1.0, -2.5, 3.25]);
        let (meta, p) = decode(Path::new("x"), &bytes, "t", 3, len_from_meta).unwrap();
        assert_eq!(meta["n"], 3);
        assert_eq!(p, vec![1.0, -2.5, 3.25]);
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let bytes = encode("t", 1, &json!({"n": 2}), &[0.5, 7.0]);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                decode(Path::new("x"), &b, "t", 1, len_from_meta).is_err(),
                "flip at {i}"
            );
        }
        for cut in 0..bytes.len() {
            assert!(decode(Path::new("x"), &bytes[..cut], "t", 1, len_from_meta).is_err());
        }
    }

    #[test]
    fn wrong_kind_and_version_are_named() {
        let bytes = encode("a", 1, &json!({"n": 0}), &[]);
        let e = decode(Path::new("f.bin"), &bytes, "b", 1, len_from_meta).unwrap_err();
        assert!(matches!(e, FramedError::WrongKind { .. }));
        assert!(e.to_string().contains("f.bin"));
        let e = decode(Path::new("f.bin"), &bytes, "a", 2, len_from_meta).unwrap_err();
        assert!(matches!(e, FramedError::WrongKind { .. }));
    }
}
