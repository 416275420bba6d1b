//! The crash-safe store of what the device was taught: captured samples (embedding, label,
//! JPEG thumbnail), the class list, and trained heads, in one state directory.
//!
//! Layout:
//! ```text
//! STATE/samples/00000042.jpg   thumbnail, written first
//! STATE/samples/00000042.rec   the record (framed: JSON meta + embedding, SHA-256) — the
//!                              commit point: a capture is acknowledged once this exists
//! STATE/index                  list of records (framed, SHA-256), a cache of the directory
//! STATE/classes                the class list (framed JSON), once the appliance has run
//! STATE/journal                an [`Edit`] being applied (framed JSON); see below
//! STATE/head.current           the live head;  STATE/head.previous  the one before it
//! STATE/quarantine/            records that failed their checksum or hold an unusable
//!                              embedding (kept, never deleted, never overwritten)
//! STATE/lock                   the writer's lock: `flock`ed for as long as a [`Store`] is
//!                              open, and holding the writer's process id
//! ```
//! One writer at a time: [`Store::open`] takes an exclusive advisory lock on `STATE/lock`
//! (released when the process ends, however it ends) and refuses, naming the holder's
//! process id, when another process has the store open (`teachcam run` while `teachcam
//! dataset import` is attempted, or the reverse).
//! Every file is replaced atomically (temp, fsync, rename, directory fsync), so a power cut
//! leaves either the old or the new version. The index is verified against the records on
//! open and rebuilt from them when torn, stale or missing.
//!
//! Edits that touch several files (relabel, delete, class list changes) go through the
//! journal: the edit is written to `STATE/journal` first — that write is the commit point —
//! then applied file by file, then the journal is removed. A kill in the middle leaves the
//! journal, and the next [`Store::open`] completes it; a kill before the journal exists
//! changed nothing. Every step is idempotent, so completing twice is harmless.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Store`]: open (recovery, index check), captures, edits, heads, the index |
//! | `record.rs` | a sample's record and thumbnail files: written, read back, verified |
//! | `journal.rs` | multi-file edits through `STATE/journal`; the class list file |
//! | `batch.rs` | staged batches, reserved ids, uploads waiting for import |
//! | `files.rs` | the writer's lock, temp files, highest id, quarantine |
//! | `error.rs` | [`StoreError`] and its [`Cause`] |
//!
//! Must not: decide labels, classes or when to train (the appliance core does).

mod batch;
mod error;
mod files;
mod journal;
mod record;
#[cfg(test)]
mod tests;

pub use batch::{Batch, IdReserver, upload_path};
pub use error::{Cause, StoreError};
pub use journal::Edit;
pub use record::{Capture, MAX_RECORD_FILE, Sample, SampleInfo, decode_record, read_thumbnail};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::framed;
use crate::fsutil::{atomic_write, sync_dir};
use crate::head::Head;
use batch::remove_abandoned_batches;
use error::io;
use files::{
    highest_named_id, is_leftover_temp, lock_state, quarantine, remove_if_present, remove_own_temps,
};
use journal::{JOURNAL_KIND, complete, read_classes, read_journal};
use record::{check_label, read_record_retrying, write_record};

const INDEX_KIND: &str = "teachcam-index";
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct IndexMeta {
    ids: Vec<u64>,
    /// The next id to give: ids are never reused, even when the newest sample was deleted
    /// or quarantined (0 in indexes written before it was recorded).
    #[serde(default)]
    next_id: u64,
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
    /// An edit interrupted by a crash was completed.
    pub edit_completed: bool,
}

/// An open state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    samples: Vec<Sample>,
    classes: Option<Vec<String>>,
    /// The next id to give, shared with [`IdReserver`]s (a batch staged beside the running
    /// loop reserves its ids here, so captures meanwhile never take them).
    next_id: Arc<AtomicU64>,
    backbone: String,
    /// A committed edit whose files are not all written yet (the disk filled up half way);
    /// finished before the next edit, and by the next open at the latest.
    unfinished: Option<Edit>,
    /// `STATE/lock`, `flock`ed exclusively: held (and released by the kernel) with the
    /// store. `None` only on a read-only directory without a lock file.
    _lock: Option<std::fs::File>,
}

impl Store {
    /// Open (creating if needed) the store in `dir`, verifying and repairing it: an
    /// interrupted edit is completed, stray temp files removed, corrupt records quarantined
    /// and a torn or stale index rebuilt.
    pub fn open(dir: &Path) -> Result<(Self, OpenReport), StoreError> {
        let sdir = dir.join("samples");
        std::fs::create_dir_all(&sdir).map_err(io(&sdir))?;
        // Before anything is read or repaired: another writer's files are not ours to fix.
        let lock = lock_state(dir)?;
        let mut report = OpenReport::default();
        report.temp_removed += remove_own_temps(dir)?;
        let journal = dir.join("journal");
        if journal.exists() {
            let edit = read_journal(&journal)?;
            complete(dir, &edit)?;
            remove_if_present(&journal)?;
            sync_dir(dir).map_err(io(dir))?;
            log::warn!(
                "{} held an edit interrupted by a crash; it was completed",
                journal.display()
            );
            report.edit_completed = true;
        }
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
            let why = match read_record_retrying(&p) {
                // A checksum-valid record can still hold an unusable embedding (NaN, empty,
                // absurd norm): it must never reach a head or the trainer.
                Ok(s) => match crate::embedding::check(&s.embedding, None) {
                    Ok(()) => {
                        samples.push(s);
                        continue;
                    }
                    Err(e) => format!("{}: {e}", p.display()),
                },
                // A record that cannot be read (permissions, I/O) is not corrupt: it is kept
                // where it is and the start fails naming it.
                Err(e @ StoreError::Io { .. }) => return Err(e),
                Err(why) => why.to_string(),
            };
            let target = quarantine(dir, &p)?;
            log::error!("{why}; moved to {}", target.display());
            report.quarantined.push(target);
        }
        samples.sort_by_key(|s| s.id);
        let ids: Vec<u64> = samples.iter().map(|s| s.id).collect();
        let index_path = dir.join("index");
        let index = framed::read(&index_path, MAX_INDEX_FILE, INDEX_KIND, 1, |_| Ok(0))
            .ok()
            .and_then(|(meta, _)| serde_json::from_value::<IndexMeta>(meta).ok());
        let index_ok = index.as_ref().is_some_and(|m| m.ids == ids);
        // Never reuse an id: past the live records, the index's counter (even from a stale
        // index), and every id still named by a file here or in quarantine/.
        let next_id = [
            ids.last().map_or(1, |l| l + 1),
            index.map_or(0, |m| m.next_id),
            highest_named_id(&sdir).map_or(0, |i| i + 1),
            highest_named_id(&dir.join("quarantine")).map_or(0, |i| i + 1),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let store = Store {
            dir: dir.to_path_buf(),
            samples,
            classes: read_classes(&dir.join("classes"))?,
            next_id: Arc::new(AtomicU64::new(next_id)),
            backbone: String::new(),
            unfinished: None,
            _lock: lock,
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
            next_id: self.next_id.load(Ordering::SeqCst),
        };
        let meta = serde_json::to_value(meta).unwrap_or_default();
        let p = self.dir.join("index");
        atomic_write(&p, &framed::encode(INDEX_KIND, 1, &meta, &[])).map_err(io(&p))
    }

    /// Rewrite the index after a committed change. The index is a cache of the records
    /// (verified and rebuilt at open), so failing to write it does not undo the change.
    fn refresh_index(&self) {
        if let Err(e) = self.write_index() {
            log::warn!("{e} (the index is rebuilt from the records at the next start)");
        }
    }

    /// Tag new samples as embedded by the backbone with this digest.
    pub fn set_backbone(&mut self, digest: &str) {
        self.backbone = digest.to_string();
    }

    /// Quarantine the samples that claim the current backbone (see [`Store::set_backbone`])
    /// but whose embedding is not `dim` long: such a record (imported, or made by hand) would
    /// make every later capture fail the store's dimension check. Returns where they went.
    pub fn quarantine_mismatched(&mut self, dim: usize) -> Result<Vec<PathBuf>, StoreError> {
        let bad: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.backbone == self.backbone && s.embedding.len() != dim)
            .map(|s| s.id)
            .collect();
        let mut moved = Vec::new();
        for id in bad {
            let got = self
                .samples
                .iter()
                .find(|s| s.id == id)
                .map_or(0, |s| s.embedding.len());
            let target = quarantine(&self.dir, &self.record_path(id))?;
            log::error!(
                "sample {id} has a {got}-d embedding, the backbone gives {dim}; moved to {}",
                target.display()
            );
            self.samples.retain(|s| s.id != id);
            moved.push(target);
        }
        if !moved.is_empty() {
            self.refresh_index();
        }
        Ok(moved)
    }

    /// The class list the appliance saved, if it ever did.
    pub fn classes(&self) -> Option<&[String]> {
        self.classes.as_deref()
    }

    /// The thumbnail of sample `id`, checked against the checksum in its record.
    pub fn thumbnail(&self, id: u64) -> Result<Vec<u8>, StoreError> {
        let s = self
            .samples
            .iter()
            .find(|s| s.id == id)
            .ok_or(StoreError::NoSample(id))?;
        read_thumbnail(&self.dir, id, &s.thumb_sha256)
    }

    /// The record file of sample `id` (its bytes carry their own checksum).
    pub fn record_path(&self, id: u64) -> PathBuf {
        self.dir.join("samples").join(format!("{id:08}.rec"))
    }

    /// Replace sample `id`'s embedding (after a backbone change), atomically.
    pub fn replace_embedding(&mut self, id: u64, embedding: &[f32]) -> Result<(), StoreError> {
        let backbone = self.backbone.clone();
        let dir = self.dir.clone();
        let Some(s) = self.samples.iter_mut().find(|s| s.id == id) else {
            return Err(StoreError::NoSample(id));
        };
        let updated = Sample {
            embedding: embedding.to_vec(),
            backbone,
            ..s.clone()
        };
        write_record(&dir, &updated)?;
        *s = updated;
        Ok(())
    }

    /// The embedding length of this backbone's samples (`None` before the first).
    fn dim(&self) -> Option<usize> {
        let first = self.samples.iter().find(|s| s.backbone == self.backbone);
        first.map(|s| s.embedding.len())
    }

    /// All samples, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// A handle that reserves sample ids for a batch staged on another thread.
    pub fn id_reserver(&self) -> IdReserver {
        IdReserver(Arc::clone(&self.next_id))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store a capture durably, as a press of its own. When this returns `Ok`, the sample
    /// survives a power cut.
    pub fn add(
        &mut self,
        label: &str,
        embedding: &[f32],
        thumb_jpeg: &[u8],
        time_ms: u64,
    ) -> Result<u64, StoreError> {
        self.add_to_press(label, embedding, thumb_jpeg, time_ms, None)
    }

    /// [`Store::add`], continuing the press whose first sample is `press` (a burst's later
    /// frames), or starting one (`None`).
    pub fn add_to_press(
        &mut self,
        label: &str,
        embedding: &[f32],
        thumb_jpeg: &[u8],
        time_ms: u64,
        press: Option<u64>,
    ) -> Result<u64, StoreError> {
        let capture = Capture {
            label,
            embedding,
            thumb_jpeg,
            time_ms,
            press,
        };
        // Checked before an id is taken; the id is set once taken, below.
        let mut sample = capture.sample(0, &self.backbone, self.dim())?;
        // An edit left half-done by a full disk goes first (it never touches new ids).
        if let Err(e) = self.finish_unfinished() {
            log::warn!("the unfinished edit is still pending: {e}");
        }
        // Taken before anything is written: a reservation made meanwhile gets other ids.
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        sample.id = id;
        sample.press = press.unwrap_or(id);
        let give_back = || {
            // Not committed: the id is free again unless a reservation came after it.
            let _ = self
                .next_id
                .compare_exchange(id + 1, id, Ordering::SeqCst, Ordering::SeqCst);
        };
        let thumb = self.dir.join("samples").join(format!("{id:08}.jpg"));
        if let Err(e) = atomic_write(&thumb, thumb_jpeg) {
            give_back();
            return Err(io(&thumb)(e));
        }
        if let Err(e) = write_record(&self.dir, &sample) {
            // Not committed: drop the thumbnail too (best effort; the next capture of this
            // id would replace it anyway).
            let _ = std::fs::remove_file(&thumb);
            give_back();
            return Err(e);
        }
        self.samples.push(sample);
        self.refresh_index();
        Ok(id)
    }

    /// Apply `edit` through the journal (see the module docs). `Ok` means committed: the
    /// change is visible now and survives a crash. Refused without any change when a sample
    /// is unknown, a label is not a valid class name, or the journal cannot be written (a
    /// full disk or read-only state).
    pub fn apply(&mut self, edit: &Edit) -> Result<(), StoreError> {
        for &(id, ref label) in &edit.relabel {
            self.index_of(id)?;
            check_label(label)?;
        }
        for &id in &edit.delete {
            self.index_of(id)?;
        }
        for c in edit.classes.iter().flatten() {
            check_label(c)?;
        }
        // A half-done edit must be finished before its journal may be replaced.
        self.finish_unfinished()?;
        let journal = self.dir.join("journal");
        let meta = serde_json::to_value(edit).unwrap_or_default();
        atomic_write(&journal, &framed::encode(JOURNAL_KIND, 1, &meta, &[]))
            .map_err(io(&journal))?;
        // Committed. Memory follows at once; the files follow below or, if the disk fills up
        // half way, before the next edit or at the next open.
        for (id, label) in &edit.relabel {
            if let Ok(i) = self.index_of(*id) {
                self.samples[i].label = label.clone();
            }
        }
        self.samples.retain(|s| !edit.delete.contains(&s.id));
        if let Some(c) = &edit.classes {
            self.classes = Some(c.clone());
        }
        self.unfinished = Some(edit.clone());
        if let Err(e) = self.finish_unfinished() {
            log::warn!("edit committed but not yet fully written ({e}); it is completed later");
        }
        Ok(())
    }

    /// Complete a committed edit's files and drop its journal.
    fn finish_unfinished(&mut self) -> Result<(), StoreError> {
        let Some(edit) = &self.unfinished else {
            return Ok(());
        };
        complete(&self.dir, edit)?;
        let journal = self.dir.join("journal");
        remove_if_present(&journal)?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        self.unfinished = None;
        self.refresh_index();
        Ok(())
    }

    fn index_of(&self, id: u64) -> Result<usize, StoreError> {
        self.samples
            .iter()
            .position(|s| s.id == id)
            .ok_or(StoreError::NoSample(id))
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

/// Largest index file read.
const MAX_INDEX_FILE: u64 = 64 << 20;
