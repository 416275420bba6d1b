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
        remove_abandoned_batches(dir, &mut report)?;
        let mut names: Vec<PathBuf> = std::fs::read_dir(&sdir)
            .map_err(io(&sdir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let mut samples = Vec::new();
        for p in names {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if is_leftover_temp(name) {
                // An interrupted atomic write: never acknowledged, safe to drop. Only names
                // this program makes are matched: a user's `.my.tmpnotes` stays.
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
        let index_ok = match framed::read(&index_path, MAX_INDEX_FILE, INDEX_KIND, 1, |_| Ok(0)) {
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
        let bytes = crate::fsutil::read_bounded(&p, MAX_THUMB_FILE)
            .map_err(|e| format!("{}: {e}", p.display()))?;
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

/// Prefix of a batch's staging folder in the state directory (`.batch-PID`).
const BATCH_PREFIX: &str = ".batch-";

/// Leftover temp files: [`crate::fsutil::is_temp_name`], and the names earlier versions gave
/// their temp files (`.00000042.rec.tmp1234`), matched exactly.
fn is_leftover_temp(name: &str) -> bool {
    if crate::fsutil::is_temp_name(name) {
        return true;
    }
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let (stem, pid) = match rest.split_once(".tmp") {
        Some(x) => x,
        None => return false,
    };
    let id_ext = stem
        .strip_suffix(".rec")
        .or_else(|| stem.strip_suffix(".jpg"));
    id_ext.is_some_and(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_digit()))
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
}

/// Remove staging folders of batches whose process is gone (it was killed before its
/// commit: nothing in them was acknowledged).
fn remove_abandoned_batches(dir: &Path, report: &mut OpenReport) -> Result<(), StoreError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(BATCH_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 0 && pid_alive(pid) {
            continue;
        }
        let p = e.path();
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
        report.temp_removed += 1;
    }
    Ok(())
}

/// True if a process with this id exists (it may belong to another user).
fn pid_alive(pid: i32) -> bool {
    if pid as u32 == std::process::id() {
        return true;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Samples written beside the live set and added to it in one step by
/// [`Store::commit_batch`] (used by import: everything is checked and staged first, so a
/// bad sample half-way adds nothing). Dropped uncommitted, its staging folder is removed.
#[derive(Debug)]
pub struct Batch {
    dir: PathBuf,
    first_id: u64,
    staged: Vec<Sample>,
    backbone: String,
    dim: Option<usize>,
    committed: bool,
}

impl Batch {
    /// Write one sample into the staging folder (not yet durable, not yet in the store).
    pub fn stage(
        &mut self,
        label: &str,
        embedding: &[f32],
        thumb_jpeg: &[u8],
        time_ms: u64,
    ) -> Result<u64, StoreError> {
        if let Some(want) = self.dim
            && want != embedding.len()
        {
            return Err(StoreError::Dim {
                want,
                got: embedding.len(),
            });
        }
        self.dim = Some(embedding.len());
        let id = self.first_id + self.staged.len() as u64;
        let thumb_sha256 = crate::fsutil::sha256_hex(thumb_jpeg);
        let meta = RecMeta {
            id,
            label: label.to_string(),
            time_ms,
            dim: embedding.len(),
            thumb_sha256: thumb_sha256.clone(),
            backbone: self.backbone.clone(),
        };
        let meta = serde_json::to_value(meta).unwrap_or_default();
        for (ext, bytes) in [
            ("jpg", thumb_jpeg.to_vec()),
            ("rec", framed::encode(REC_KIND, 1, &meta, embedding)),
        ] {
            let p = self.dir.join(format!("{id:08}.{ext}"));
            std::fs::write(&p, bytes).map_err(io(&p))?;
        }
        self.staged.push(Sample {
            id,
            label: label.to_string(),
            time_ms,
            embedding: embedding.to_vec(),
            backbone: self.backbone.clone(),
            thumb_sha256,
        });
        Ok(id)
    }

    /// Samples staged so far.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `syncfs` on the filesystem holding `dir`: every file staged there is durable at once
/// (one call instead of one `fsync` per file).
fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    // SAFETY: `f` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Store {
    /// Start a batch of samples (see [`Batch`]). Its ids follow the store's; no other
    /// sample may be added before it is committed.
    pub fn begin_batch(&self) -> Result<Batch, StoreError> {
        let dir = self
            .dir
            .join(format!("{BATCH_PREFIX}{}", std::process::id()));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&dir)(e)),
        }
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        let dim = self
            .samples
            .iter()
            .find(|s| s.backbone == self.backbone)
            .map(|s| s.embedding.len());
        Ok(Batch {
            dir,
            first_id: self.next_id,
            staged: Vec::new(),
            backbone: self.backbone.clone(),
            dim,
            committed: false,
        })
    }

    /// Add every staged sample: one filesystem sync, renames into `samples/` (thumbnail,
    /// then record, the commit point of each), one directory sync and one index write.
    /// Returns how many were added. A crash during the renames leaves a prefix of the batch
    /// added, each sample whole; importing again adds the rest.
    pub fn commit_batch(&mut self, mut batch: Batch) -> Result<usize, StoreError> {
        if batch.first_id != self.next_id {
            return Err(StoreError::Io {
                path: batch.dir.clone(),
                source: std::io::Error::other("samples were added while the batch was staged"),
            });
        }
        if batch.staged.is_empty() {
            return Ok(0);
        }
        sync_filesystem(&batch.dir).map_err(io(&batch.dir))?;
        let sdir = self.dir.join("samples");
        let staged = std::mem::take(&mut batch.staged);
        let mut added = 0;
        let mut result = Ok(());
        for s in staged {
            let moved = ["jpg", "rec"].iter().try_for_each(|ext| {
                let from = batch.dir.join(format!("{:08}.{ext}", s.id));
                let to = sdir.join(format!("{:08}.{ext}", s.id));
                std::fs::rename(&from, &to).map_err(io(&from))
            });
            if let Err(e) = moved {
                result = Err(e);
                break;
            }
            self.next_id = s.id + 1;
            self.samples.push(s);
            added += 1;
        }
        sync_dir(&sdir).map_err(io(&sdir))?;
        self.write_index()?;
        result?;
        batch.committed = true;
        let _ = std::fs::remove_dir_all(&batch.dir);
        Ok(added)
    }
}

/// Largest record file read (a header and 4 bytes per embedding dimension).
pub const MAX_RECORD_FILE: u64 = 1 << 20;
/// Largest index file read.
const MAX_INDEX_FILE: u64 = 64 << 20;
/// Largest thumbnail read.
const MAX_THUMB_FILE: u64 = 16 << 20;

fn read_record(p: &Path) -> Result<Sample, String> {
    let bytes = crate::fsutil::read_bounded(p, MAX_RECORD_FILE).map_err(|e| e.to_string())?;
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
    fn only_temp_files_this_program_names_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        s.add("a", &[1.0], b"t", 1).unwrap();
        drop(s);
        let sdir = d.path().join("samples");
        for user in [".my.tmpnotes", ".notes.tmp", ".00000001.txt.tmp5", "x.tmp1"] {
            std::fs::write(sdir.join(user), b"mine").unwrap();
        }
        let ours = [".00000002.rec.teachcam-tmp.77.0", ".00000002.jpg.tmp42"];
        for t in ours {
            std::fs::write(sdir.join(t), b"partial").unwrap();
        }
        let (_, rep) = Store::open(d.path()).unwrap();
        assert_eq!(rep.temp_removed, 2);
        for user in [".my.tmpnotes", ".notes.tmp", ".00000001.txt.tmp5", "x.tmp1"] {
            assert!(sdir.join(user).exists(), "{user} was deleted");
        }
        for t in ours {
            assert!(!sdir.join(t).exists(), "{t} left behind");
        }
    }

    #[test]
    fn a_batch_adds_all_or_nothing_with_one_index_write() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        s.add("a", &[1.0, 0.0], b"first", 1).unwrap();
        // Dropped before commit: nothing added, nothing left.
        let mut b = s.begin_batch().unwrap();
        b.stage("b", &[0.0, 1.0], b"x", 2).unwrap();
        assert!(matches!(
            b.stage("b", &[0.0, 1.0, 2.0], b"y", 2),
            Err(StoreError::Dim { want: 2, got: 3 })
        ));
        drop(b);
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(BATCH_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(s.samples().len(), 1);
        // Committed: every sample arrives, ids continue, the reopened store agrees.
        let mut b = s.begin_batch().unwrap();
        for i in 0..5 {
            b.stage("b", &[i as f32, 1.0], format!("t{i}").as_bytes(), 10 + i)
                .unwrap();
        }
        assert_eq!(b.len(), 5);
        assert_eq!(s.commit_batch(b).unwrap(), 5);
        assert_eq!(s.add("c", &[1.0, 1.0], b"after", 3).unwrap(), 7);
        drop(s);
        let (s, rep) = Store::open(d.path()).unwrap();
        assert!(!rep.index_rebuilt, "the batch wrote the index");
        assert_eq!(
            s.ids().into_iter().collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        assert_eq!(s.samples()[3].time_ms, 12);
        assert_eq!(s.thumbnail(4).unwrap(), b"t2");
    }

    #[test]
    fn a_batch_abandoned_by_a_dead_process_is_removed_on_open() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        drop(s);
        // A process id that cannot be alive (above the kernel's pid_max).
        let dead = d.path().join(format!("{BATCH_PREFIX}{}", i32::MAX));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("00000001.rec"), b"staged").unwrap();
        let (s, rep) = Store::open(d.path()).unwrap();
        assert!(!dead.exists());
        assert_eq!((rep.temp_removed, s.samples().len()), (1, 0));
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
