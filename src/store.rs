//! The crash-safe store of what the device was taught: captured samples (embedding, label,
//! JPEG thumbnail) and trained heads, in one state directory.
//!
//! Layout:
//! ```text
//! STATE/samples/00000042.jpg   thumbnail, written first
//! STATE/samples/00000042.rec   the record (framed: JSON meta + embedding, SHA-256) — the
//!                              commit point: a capture is acknowledged once this exists
//! STATE/index                  list of records (framed, SHA-256), a cache of the directory
//! STATE/head.current           the live head;  STATE/head.previous  the one before it
//! STATE/quarantine/            records that failed their checksum (kept, never deleted)
//! ```
//! Every file is replaced atomically (temp, fsync, rename, directory fsync), so a power cut
//! leaves either the old or the new version. The index is verified against the records on
//! open and rebuilt from them when torn, stale or missing. Must not: decide labels or when
//! to train (the daemon does).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::framed;
use crate::fsutil::{atomic_write, sync_dir};
use crate::head::Head;

const REC_KIND: &str = "teachcam-sample";
const INDEX_KIND: &str = "teachcam-index";

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error(
        "state directory {path}: {source}; check that it exists and that this user may write to it"
    )]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The embedding length differs from the store's.
    #[error("sample has {got}-d embedding, the store holds {want}-d ones")]
    Dim {
        /// Store dimension.
        want: usize,
        /// Offered dimension.
        got: usize,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

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
    /// SHA-256 of the backbone that made the embedding ("" in records from before it was
    /// recorded).
    pub backbone: String,
    /// SHA-256 of the thumbnail JPEG.
    pub thumb_sha256: String,
}

#[derive(Serialize, Deserialize)]
struct RecMeta {
    id: u64,
    label: String,
    time_ms: u64,
    dim: usize,
    thumb_sha256: String,
    #[serde(default)]
    backbone: String,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct IndexMeta {
    ids: Vec<u64>,
}

/// What opening the store found and repaired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenReport {
    /// Samples loaded.
    pub samples: usize,
    /// The index was missing, corrupt or stale and was rebuilt from the records.
    pub index_rebuilt: bool,
    /// Records that failed their checksum and were moved to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
    /// Unfinished temp files removed.
    pub temp_removed: usize,
}

/// An open state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    samples: Vec<Sample>,
    next_id: u64,
    backbone: String,
}

impl Store {
    /// Open (creating if needed) the store in `dir`, verifying and repairing it.
    pub fn open(dir: &Path) -> Result<(Self, OpenReport), StoreError> {
        let sdir = dir.join("samples");
        std::fs::create_dir_all(&sdir).map_err(io(&sdir))?;
        let mut report = OpenReport::default();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&sdir)
            .map_err(io(&sdir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let mut samples = Vec::new();
        for p in names {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.contains(".tmp") {
                // An interrupted atomic write: never acknowledged, safe to drop.
                std::fs::remove_file(&p).map_err(io(&p))?;
                report.temp_removed += 1;
                continue;
            }
            if !name.ends_with(".rec") {
                continue;
            }
            match read_record(&p) {
                Ok(s) => samples.push(s),
                Err(why) => {
                    let q = dir.join("quarantine");
                    std::fs::create_dir_all(&q).map_err(io(&q))?;
                    let target = q.join(name);
                    std::fs::rename(&p, &target).map_err(io(&p))?;
                    log::error!(
                        "{} is corrupt ({why}); moved to {}",
                        p.display(),
                        target.display()
                    );
                    report.quarantined.push(target);
                }
            }
        }
        samples.sort_by_key(|s| s.id);
        let ids: Vec<u64> = samples.iter().map(|s| s.id).collect();
        let index_path = dir.join("index");
        let index_ok = match framed::read(&index_path, INDEX_KIND, 1, |_| Ok(0)) {
            Ok((meta, _)) => serde_json::from_value::<IndexMeta>(meta).is_ok_and(|m| m.ids == ids),
            Err(_) => false,
        };
        let next_id = ids.last().map_or(1, |l| l + 1);
        let store = Store {
            dir: dir.to_path_buf(),
            samples,
            next_id,
            backbone: String::new(),
        };
        if !index_ok {
            if index_path.exists() {
                log::warn!(
                    "{} is torn or stale; rebuilt from {} records",
                    index_path.display(),
                    ids.len()
                );
            }
            store.write_index()?;
            report.index_rebuilt = true;
        }
        report.samples = store.samples.len();
        Ok((store, report))
    }

    fn write_index(&self) -> Result<(), StoreError> {
        let meta = IndexMeta {
            ids: self.samples.iter().map(|s| s.id).collect(),
        };
        let meta = serde_json::to_value(meta).unwrap_or_default();
        let p = self.dir.join("index");
        atomic_write(&p, &framed::encode(INDEX_KIND, 1, &meta, &[])).map_err(io(&p))
    }

    /// Tag new samples as embedded by the backbone with this SHA-256.
    pub fn set_backbone(&mut self, sha256: &str) {
        self.backbone = sha256.to_string();
    }

    /// The thumbnail of sample `id`, checked against the checksum in its record.
    pub fn thumbnail(&self, id: u64) -> Result<Vec<u8>, String> {
        let s = self
            .samples
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| format!("no sample {id}"))?;
        let p = self.dir.join("samples").join(format!("{id:08}.jpg"));
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if crate::fsutil::sha256_hex(&bytes) != s.thumb_sha256 {
            return Err(format!(
                "{} does not match its record's checksum",
                p.display()
            ));
        }
        Ok(bytes)
    }

    /// The record file of sample `id` (its bytes carry their own checksum).
    pub fn record_path(&self, id: u64) -> PathBuf {
        self.dir.join("samples").join(format!("{id:08}.rec"))
    }

    /// Replace sample `id`'s embedding (after a backbone change), atomically.
    pub fn replace_embedding(&mut self, id: u64, embedding: &[f32]) -> Result<(), StoreError> {
        let Some(s) = self.samples.iter_mut().find(|s| s.id == id) else {
            return Ok(());
        };
        let meta = RecMeta {
            id,
            label: s.label.clone(),
            time_ms: s.time_ms,
            dim: embedding.len(),
            thumb_sha256: s.thumb_sha256.clone(),
            backbone: self.backbone.clone(),
        };
        let meta = serde_json::to_value(meta).unwrap_or_default();
        let rec = self.dir.join("samples").join(format!("{id:08}.rec"));
        atomic_write(&rec, &framed::encode(REC_KIND, 1, &meta, embedding)).map_err(io(&rec))?;
        s.embedding = embedding.to_vec();
        s.backbone = self.backbone.clone();
        Ok(())
    }

    /// All samples, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store a capture durably. When this returns `Ok`, the sample survives a power cut.
    pub fn add(
        &mut self,
        label: &str,
        embedding: &[f32],
        thumb_jpeg: &[u8],
        time_ms: u64,
    ) -> Result<u64, StoreError> {
        if let Some(first) = self.samples.iter().find(|s| s.backbone == self.backbone)
            && first.embedding.len() != embedding.len()
        {
            return Err(StoreError::Dim {
                want: first.embedding.len(),
                got: embedding.len(),
            });
        }
        let id = self.next_id;
        let sdir = self.dir.join("samples");
        let thumb = sdir.join(format!("{id:08}.jpg"));
        atomic_write(&thumb, thumb_jpeg).map_err(io(&thumb))?;
        let meta = RecMeta {
            id,
            label: label.to_string(),
            time_ms,
            dim: embedding.len(),
            thumb_sha256: crate::fsutil::sha256_hex(thumb_jpeg),
            backbone: self.backbone.clone(),
        };
        let thumb_sha256 = meta.thumb_sha256.clone();
        let meta = serde_json::to_value(meta).unwrap_or_default();
        let rec = sdir.join(format!("{id:08}.rec"));
        atomic_write(&rec, &framed::encode(REC_KIND, 1, &meta, embedding)).map_err(io(&rec))?;
        self.next_id += 1;
        self.samples.push(Sample {
            id,
            label: label.to_string(),
            time_ms,
            embedding: embedding.to_vec(),
            backbone: self.backbone.clone(),
            thumb_sha256,
        });
        self.write_index()?;
        Ok(id)
    }

    /// Remove the newest sample (undo); returns it.
    pub fn remove_last(&mut self) -> Result<Option<Sample>, StoreError> {
        let Some(last) = self.samples.last().cloned() else {
            return Ok(None);
        };
        let sdir = self.dir.join("samples");
        // Record first (it is the commit point), then its thumbnail, then the index.
        for ext in ["rec", "jpg"] {
            let p = sdir.join(format!("{:08}.{ext}", last.id));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        sync_dir(&sdir).map_err(io(&sdir))?;
        self.samples.pop();
        self.write_index()?;
        Ok(Some(last))
    }

    /// Number of samples per label, in `labels` order.
    pub fn counts(&self, labels: &[String]) -> Vec<usize> {
        labels
            .iter()
            .map(|l| self.samples.iter().filter(|s| &s.label == l).count())
            .collect()
    }

    /// Ids of all samples.
    pub fn ids(&self) -> BTreeSet<u64> {
        self.samples.iter().map(|s| s.id).collect()
    }

    /// Save a new head, keeping the current one as `head.previous`.
    pub fn save_head(&self, head: &Head) -> Result<(), StoreError> {
        let cur = self.dir.join("head.current");
        let prev = self.dir.join("head.previous");
        if cur.exists() {
            std::fs::rename(&cur, &prev).map_err(io(&cur))?;
        }
        atomic_write(&cur, &head.encode()).map_err(io(&cur))
    }

    /// The newest valid head: `head.current`, else `head.previous`.
    pub fn load_head(&self) -> Option<Head> {
        for name in ["head.current", "head.previous"] {
            let p = self.dir.join(name);
            if !p.exists() {
                continue;
            }
            match Head::load(&p) {
                Ok(h) => return Some(h),
                Err(e) => log::error!("{e}; trying the previous head"),
            }
        }
        None
    }
}

fn read_record(p: &Path) -> Result<Sample, String> {
    let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
    decode_record(p, &bytes)
}

/// Parse and verify a sample record's bytes (`p` names it in messages).
pub fn decode_record(p: &Path, bytes: &[u8]) -> Result<Sample, String> {
    let (meta, payload) = framed::decode(p, bytes, REC_KIND, 1, |m| {
        framed::meta_usize(m, "dim").ok_or_else(|| "no dim".to_string())
    })
    .map_err(|e| e.to_string())?;
    let m: RecMeta = serde_json::from_value(meta).map_err(|e| e.to_string())?;
    Ok(Sample {
        id: m.id,
        label: m.label,
        time_ms: m.time_ms,
        embedding: payload,
        backbone: m.backbone,
        thumb_sha256: m.thumb_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_reopen_undo_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, r) = Store::open(d.path()).unwrap();
        assert_eq!(r.samples, 0);
        let a = s.add("cup", &[1.0, 2.0], b"jpg-a", 10).unwrap();
        let b = s.add("pen", &[3.0, 4.0], b"jpg-b", 11).unwrap();
        assert!(b > a);
        drop(s);
        let (mut s, r) = Store::open(d.path()).unwrap();
        assert_eq!((r.samples, r.index_rebuilt), (2, false));
        assert_eq!(s.samples()[1].embedding, vec![3.0, 4.0]);
        assert_eq!(
            s.counts(&["cup".into(), "pen".into(), "x".into()]),
            vec![1, 1, 0]
        );
        assert_eq!(s.remove_last().unwrap().unwrap().label, "pen");
        drop(s);
        let (s, _) = Store::open(d.path()).unwrap();
        assert_eq!(s.ids().into_iter().collect::<Vec<_>>(), vec![a]);
        assert!(matches!(
            Store::open(d.path()).unwrap().0.add("x", &[1.0], b"", 0),
            Err(StoreError::Dim { .. })
        ));
    }

    #[test]
    fn torn_index_is_rebuilt_and_corrupt_records_quarantined() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        for i in 0..5 {
            s.add("a", &[i as f32; 4], b"t", i).unwrap();
        }
        drop(s);
        // Tear the index and flip a byte in one record; leave a stray temp file.
        let idx = d.path().join("index");
        let bytes = std::fs::read(&idx).unwrap();
        std::fs::write(&idx, &bytes[..bytes.len() / 2]).unwrap();
        let rec = d.path().join("samples/00000003.rec");
        let mut r = std::fs::read(&rec).unwrap();
        let n = r.len();
        r[n - 40] ^= 1;
        std::fs::write(&rec, r).unwrap();
        std::fs::write(d.path().join("samples/.00000006.rec.tmp123"), b"partial").unwrap();
        let (s, rep) = Store::open(d.path()).unwrap();
        assert!(rep.index_rebuilt);
        assert_eq!(rep.quarantined.len(), 1);
        assert_eq!(rep.temp_removed, 1);
        assert_eq!(s.ids().into_iter().collect::<Vec<_>>(), vec![1, 2, 4, 5]);
        assert!(
            d.path().join("quarantine/00000003.rec").exists(),
            "corrupt data is kept"
        );
        // The next capture never reuses an id that is still on disk.
        drop(s);
        let (mut s, rep) = Store::open(d.path()).unwrap();
        assert!(!rep.index_rebuilt);
        assert_eq!(s.add("a", &[0.0; 4], b"t", 9).unwrap(), 6);
    }

    #[test]
    fn thumbnails_are_checked_and_embeddings_replaced_in_place() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        s.set_backbone("old");
        let id = s.add("cup", &[1.0, 2.0], b"thumb", 5).unwrap();
        assert_eq!(s.thumbnail(id).unwrap(), b"thumb");
        s.set_backbone("new");
        s.replace_embedding(id, &[7.0, 8.0, 9.0]).unwrap();
        drop(s);
        let (s, _) = Store::open(d.path()).unwrap();
        let got = &s.samples()[0];
        assert_eq!(
            (got.embedding.as_slice(), got.backbone.as_str()),
            (&[7.0, 8.0, 9.0][..], "new")
        );
        assert_eq!((got.label.as_str(), got.time_ms), ("cup", 5));
        std::fs::write(d.path().join(format!("samples/{id:08}.jpg")), b"other").unwrap();
        assert!(s.thumbnail(id).unwrap_err().contains("checksum"));
    }

    #[test]
    fn heads_keep_the_previous_one_and_fall_back_to_it() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        assert!(s.load_head().is_none());
        let mut h = Head {
            classes: vec!["a".into()],
            dim: 1,
            mean: vec![0.0],
            inv_std: vec![1.0],
            weights: vec![1.0],
            bias: vec![0.0],
            threshold: 0.5,
            backbone_sha256: "x".into(),
            precision: "w8".into(),
            info: Default::default(),
        };
        s.save_head(&h).unwrap();
        h.bias = vec![1.0];
        s.save_head(&h).unwrap();
        assert_eq!(s.load_head().unwrap().bias, vec![1.0]);
        std::fs::write(d.path().join("head.current"), b"garbage").unwrap();
        assert_eq!(
            s.load_head().unwrap().bias,
            vec![0.0],
            "falls back to head.previous"
        );
    }
}
