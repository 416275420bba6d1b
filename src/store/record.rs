//! One sample on disk: the record (`NNNNNNNN.rec`, framed JSON meta + embedding, SHA-256)
//! written after its thumbnail (`NNNNNNNN.jpg`), how a [`Capture`] becomes one, and how
//! records and thumbnails are read back (bounded, verified).
//!
//! Must not: keep an index or decide ids (the [`super::Store`] does).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{StoreError, io};
use crate::framed;
use crate::fsutil::atomic_write;

pub(super) const REC_KIND: &str = "teachcam-sample";
/// One captured sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Monotonic id (file name).
    pub id: u64,
    /// Class name.
    pub label: String,
    /// Capture time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Backbone embedding.
    pub embedding: Vec<f32>,
    /// Digest of the backbone that made the embedding ([`crate::backbone::BackboneId`]'s
    /// `digest`; "" in records from before it was recorded).
    pub backbone: String,
    /// SHA-256 of the thumbnail JPEG.
    pub thumb_sha256: String,
    /// The press it came from: the id of that press's first sample (its own id for a single
    /// capture, and in records from before presses were recorded).
    pub press: u64,
}

/// What observers see of a sample: no embedding, cheap to copy into snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleInfo {
    /// Sample id.
    pub id: u64,
    /// Class name.
    pub label: String,
    /// Capture time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// SHA-256 of its thumbnail (see [`read_thumbnail`]).
    pub thumb_sha256: String,
    /// The press it came from (the id of its first sample).
    pub press: u64,
}

impl Sample {
    /// The sample without its embedding.
    pub fn info(&self) -> SampleInfo {
        SampleInfo {
            id: self.id,
            label: self.label.clone(),
            time_ms: self.time_ms,
            thumb_sha256: self.thumb_sha256.clone(),
            press: self.press,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct RecMeta {
    id: u64,
    label: String,
    time_ms: u64,
    dim: usize,
    thumb_sha256: String,
    #[serde(default)]
    backbone: String,
    /// Only when the sample is not its press's first (older records have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    press: Option<u64>,
}

pub(super) fn check_label(label: &str) -> Result<(), StoreError> {
    crate::frame::check_class_name(label).map_err(|why| StoreError::BadLabel {
        label: label.to_string(),
        why,
    })
}

/// Write `s`'s record atomically (the commit point of a capture).
pub(super) fn write_record(dir: &Path, s: &Sample) -> Result<(), StoreError> {
    let rec = dir.join("samples").join(format!("{:08}.rec", s.id));
    atomic_write(&rec, &record_bytes(s)).map_err(io(&rec))
}

/// The record file of `s`: its metadata and embedding in the framed container.
pub(super) fn record_bytes(s: &Sample) -> Vec<u8> {
    let meta = RecMeta {
        id: s.id,
        label: s.label.clone(),
        time_ms: s.time_ms,
        dim: s.embedding.len(),
        thumb_sha256: s.thumb_sha256.clone(),
        backbone: s.backbone.clone(),
        press: (s.press != s.id).then_some(s.press),
    };
    let meta = serde_json::to_value(meta).unwrap_or_default();
    framed::encode(REC_KIND, 1, &meta, &s.embedding)
}

/// A capture to store: what [`Store::add`] takes and [`Batch::stage`] stages.
#[derive(Debug, Clone, Copy)]
pub struct Capture<'a> {
    /// Class name.
    pub label: &'a str,
    /// The backbone's embedding of the frame.
    pub embedding: &'a [f32],
    /// The JPEG thumbnail.
    pub thumb_jpeg: &'a [u8],
    /// Capture time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The press this capture continues (its first sample's id); `None` starts a press.
    pub press: Option<u64>,
}

impl Capture<'_> {
    /// Sample `id` of `backbone`, after the checks every new sample gets: its embedding as
    /// long as `dim` (that of the backbone's samples so far, if any), its label a class name.
    pub(super) fn sample(
        &self,
        id: u64,
        backbone: &str,
        dim: Option<usize>,
    ) -> Result<Sample, StoreError> {
        let got = self.embedding.len();
        if let Some(want) = dim
            && want != got
        {
            return Err(StoreError::Dim { want, got });
        }
        check_label(self.label)?;
        Ok(Sample {
            id,
            label: self.label.to_string(),
            time_ms: self.time_ms,
            embedding: self.embedding.to_vec(),
            backbone: backbone.to_string(),
            thumb_sha256: crate::fsutil::sha256_hex(self.thumb_jpeg),
            press: self.press.unwrap_or(id),
        })
    }
}

/// Largest record file read (a header and 4 bytes per embedding dimension).
pub const MAX_RECORD_FILE: u64 = 1 << 20;
/// Largest thumbnail read.
pub(super) const MAX_THUMB_FILE: u64 = 16 << 20;

/// The thumbnail of sample `id` in the state directory `dir`, checked against `sha256` (from
/// its record). For readers on other threads (a web console): it reads one file, never
/// writes, and a thumbnail replaced or deleted meanwhile is reported, not returned.
pub fn read_thumbnail(dir: &Path, id: u64, sha256: &str) -> Result<Vec<u8>, StoreError> {
    let p = dir.join("samples").join(format!("{id:08}.jpg"));
    let bytes = crate::fsutil::read_bounded(&p, MAX_THUMB_FILE).map_err(io(&p))?;
    if crate::fsutil::sha256_hex(&bytes) != sha256 {
        return Err(StoreError::Corrupt {
            path: p,
            why: "does not match its record's checksum".into(),
        });
    }
    Ok(bytes)
}

/// [`read_record`], tried again twice (50 and 200 ms later) when the file cannot be read: a
/// transient I/O error (a slow or flaky SD card) must not stop the start, and a persistent
/// one is reported by the caller with the record kept where it is.
pub(super) fn read_record_retrying(p: &Path) -> Result<Sample, StoreError> {
    let mut result = read_record(p);
    for wait_ms in [50, 200] {
        match &result {
            Err(StoreError::Io { source, .. }) => {
                log::warn!("cannot read {} ({source}); trying again", p.display());
                std::thread::sleep(std::time::Duration::from_millis(wait_ms));
                result = read_record(p);
            }
            _ => break,
        }
    }
    result
}

pub(super) fn read_record(p: &Path) -> Result<Sample, StoreError> {
    let bytes = crate::fsutil::read_bounded(p, MAX_RECORD_FILE).map_err(io(p))?;
    decode_record(p, &bytes)
}

/// Parse and verify a sample record's bytes (`p` names it in messages).
pub fn decode_record(p: &Path, bytes: &[u8]) -> Result<Sample, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt {
        path: p.to_path_buf(),
        why,
    };
    let (meta, payload) = framed::decode(p, bytes, REC_KIND, 1, |m| {
        framed::meta_usize(m, "dim").ok_or_else(|| "no dim".to_string())
    })
    .map_err(|e| corrupt(e.to_string()))?;
    let m: RecMeta = serde_json::from_value(meta).map_err(|e| corrupt(e.to_string()))?;
    Ok(Sample {
        id: m.id,
        label: m.label,
        time_ms: m.time_ms,
        embedding: payload,
        backbone: m.backbone,
        thumb_sha256: m.thumb_sha256,
        press: m.press.unwrap_or(m.id),
    })
}
