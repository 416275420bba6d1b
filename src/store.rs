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
//! Must not: decide labels, classes or when to train (the appliance core does).

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::framed;
use crate::fsutil::{atomic_write, sync_dir};
use crate::head::Head;

const REC_KIND: &str = "teachcam-sample";
const INDEX_KIND: &str = "teachcam-index";
const CLASSES_KIND: &str = "teachcam-classes";
const JOURNAL_KIND: &str = "teachcam-journal";

/// Files at the top of the state directory that this program writes (atomically, so a
/// leftover temp file of one of these is an interrupted write and safe to remove).
const OWN_FILES: [&str; 5] = [
    "index",
    "classes",
    "journal",
    "head.current",
    "head.previous",
];

/// Why a store operation failed. Each variant names the file or sample.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error(
        "state directory {path}: {source}; check that it exists, that this user may write to it and that the disk has room"
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
    /// A file failed its checksum or does not parse.
    #[error("{path} is corrupt ({why}); move it away to start without it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An edit names a sample the store does not have.
    #[error("no sample {0}")]
    NoSample(u64),
    /// Another process has the state directory open (one writer at a time).
    #[error(
        "state directory {dir} is in use by {holder}; one program at a time may write it: stop that one first (e.g. `systemctl stop teachcam`), then retry"
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// Who holds it ("process 1234", or "another process" when its id is unknown).
        holder: String,
    },
    /// An edit would store a label that cannot be a class name.
    #[error("label {label:?} {why}")]
    BadLabel {
        /// The label.
        label: String,
        /// Why not.
        why: String,
    },
}

/// What kind of failure a [`StoreError`] is, for the appliance's policy and its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The disk (or the user's quota) is full: retry once space is freed.
    DiskFull,
    /// The state directory cannot be written (read-only mount, permissions).
    ReadOnly,
    /// Anything else.
    Other,
}

impl StoreError {
    /// Classify the failure (disk full and read-only state are expected on appliances).
    pub fn cause(&self) -> Cause {
        use std::io::ErrorKind as K;
        match self {
            StoreError::Io { source, .. } => match source.kind() {
                K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Cause::DiskFull,
                K::ReadOnlyFilesystem | K::PermissionDenied => Cause::ReadOnly,
                _ => Cause::Other,
            },
            _ => Cause::Other,
        }
    }
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
    /// Digest of the backbone that made the embedding ([`crate::backbone::BackboneId`]'s
    /// `digest`; "" in records from before it was recorded).
    pub backbone: String,
    /// SHA-256 of the thumbnail JPEG.
    pub thumb_sha256: String,
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
}

impl Sample {
    /// The sample without its embedding.
    pub fn info(&self) -> SampleInfo {
        SampleInfo {
            id: self.id,
            label: self.label.clone(),
            time_ms: self.time_ms,
            thumb_sha256: self.thumb_sha256.clone(),
        }
    }
}

/// A change to several records and the class list that happens completely or not at all
/// (through the journal). Applied in field order: relabel, delete, then the class list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    /// Give these samples a new label.
    #[serde(default)]
    pub relabel: Vec<(u64, String)>,
    /// Delete these samples (record, then thumbnail).
    #[serde(default)]
    pub delete: Vec<u64>,
    /// Replace the class list.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
}

impl Edit {
    /// Delete `ids`.
    pub fn delete(ids: Vec<u64>) -> Self {
        Edit {
            delete: ids,
            ..Edit::default()
        }
    }
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
    /// The next id to give: ids are never reused, even when the newest sample was deleted
    /// or quarantined (0 in indexes written before it was recorded).
    #[serde(default)]
    next_id: u64,
}

#[derive(Serialize, Deserialize)]
struct ClassesMeta {
    classes: Vec<String>,
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

/// Take the state directory's writer lock (see the module docs), or say who holds it.
fn lock_state(dir: &Path) -> Result<Option<std::fs::File>, StoreError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let p = dir.join("lock");
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p);
    let mut f = match opened {
        Ok(f) => f,
        // A read-only state directory (or lock file) still gets the lock when the file
        // exists: flock works on a descriptor opened for reading. When it does not exist
        // on a read-only directory, nobody can write here, so there is nothing to guard.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            match std::fs::File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    log::warn!(
                        "{} is read-only: opened without a writer lock",
                        dir.display()
                    );
                    return Ok(None);
                }
                Err(e) => return Err(io(&p)(e)),
            }
        }
        Err(e) => return Err(io(&p)(e)),
    };
    // SAFETY: `f` is an open descriptor for the duration of the call; flock only reads it.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(&p)(e));
        }
        let mut text = String::new();
        let _ = Read::by_ref(&mut f).take(32).read_to_string(&mut text);
        let holder = match text.trim().parse::<u32>() {
            Ok(pid) => format!("process {pid}"),
            Err(_) => "another process".to_string(),
        };
        return Err(StoreError::Locked {
            dir: dir.to_path_buf(),
            holder,
        });
    }
    // Ours now: say who we are, for the next one who tries.
    let said = f
        .set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| writeln!(f, "{}", std::process::id()));
    if let Err(e) = said {
        log::debug!("cannot write the process id into {}: {e}", p.display());
    }
    Ok(Some(f))
}

/// Whether `name` is the temp file of an atomic write of `own`: `.NAME.teachcam-tmp.PID.N`
/// ([`crate::fsutil::is_temp_name`]) or the older `.NAME.tmpPID`.
fn is_temp_of(name: &str, own: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_prefix(own)) else {
        return false;
    };
    if crate::fsutil::is_temp_name(name) && rest.starts_with(".teachcam-tmp.") {
        return true;
    }
    rest.strip_prefix(".tmp")
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

fn remove_if_present(p: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(p)(e)),
    }
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

    /// Store a capture durably. When this returns `Ok`, the sample survives a power cut.
    pub fn add(
        &mut self,
        label: &str,
        embedding: &[f32],
        thumb_jpeg: &[u8],
        time_ms: u64,
    ) -> Result<u64, StoreError> {
        let capture = Capture {
            label,
            embedding,
            thumb_jpeg,
            time_ms,
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

fn check_label(label: &str) -> Result<(), StoreError> {
    crate::frame::check_class_name(label).map_err(|why| StoreError::BadLabel {
        label: label.to_string(),
        why,
    })
}

/// Remove leftover temp files of this program's own top-level files (nothing else).
fn remove_own_temps(dir: &Path) -> Result<usize, StoreError> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if OWN_FILES.iter().any(|own| is_temp_of(&name, own)) {
            remove_if_present(&e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Write `s`'s record atomically (the commit point of a capture).
fn write_record(dir: &Path, s: &Sample) -> Result<(), StoreError> {
    let rec = dir.join("samples").join(format!("{:08}.rec", s.id));
    atomic_write(&rec, &record_bytes(s)).map_err(io(&rec))
}

/// The record file of `s`: its metadata and embedding in the framed container.
fn record_bytes(s: &Sample) -> Vec<u8> {
    let meta = RecMeta {
        id: s.id,
        label: s.label.clone(),
        time_ms: s.time_ms,
        dim: s.embedding.len(),
        thumb_sha256: s.thumb_sha256.clone(),
        backbone: s.backbone.clone(),
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
}

impl Capture<'_> {
    /// Sample `id` of `backbone`, after the checks every new sample gets: its embedding as
    /// long as `dim` (that of the backbone's samples so far, if any), its label a class name.
    fn sample(&self, id: u64, backbone: &str, dim: Option<usize>) -> Result<Sample, StoreError> {
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
        })
    }
}

/// Make the files say what `edit` says. Idempotent: a record already relabelled or deleted
/// is left alone, so an interrupted completion can simply run again.
fn complete(dir: &Path, edit: &Edit) -> Result<(), StoreError> {
    let sdir = dir.join("samples");
    for (id, label) in &edit.relabel {
        let p = sdir.join(format!("{id:08}.rec"));
        if !p.exists() {
            continue;
        }
        let s = read_record(&p)?;
        if &s.label != label {
            write_record(
                dir,
                &Sample {
                    label: label.clone(),
                    ..s
                },
            )?;
        }
    }
    for id in &edit.delete {
        // Record first (the commit point of the sample), then its thumbnail.
        remove_if_present(&sdir.join(format!("{id:08}.rec")))?;
        remove_if_present(&sdir.join(format!("{id:08}.jpg")))?;
    }
    if !edit.delete.is_empty() {
        sync_dir(&sdir).map_err(io(&sdir))?;
    }
    if let Some(classes) = &edit.classes {
        let p = dir.join("classes");
        let meta = serde_json::to_value(ClassesMeta {
            classes: classes.clone(),
        })
        .unwrap_or_default();
        atomic_write(&p, &framed::encode(CLASSES_KIND, 1, &meta, &[])).map_err(io(&p))?;
    }
    Ok(())
}

/// Prefix of a batch's staging folder in the state directory (`.batch-PID`).
const BATCH_PREFIX: &str = ".batch-";
/// Prefix of an uploaded tarball waiting to be imported (`.upload-PID.tar`).
const UPLOAD_PREFIX: &str = ".upload-";

/// Where this process keeps a dataset upload (the web console's) while it is verified and
/// staged; removed by the uploader, or at the next open once this process is gone.
pub fn upload_path(state_dir: &Path) -> PathBuf {
    state_dir.join(format!("{UPLOAD_PREFIX}{}.tar", std::process::id()))
}

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
            .and_then(|n| {
                n.strip_prefix(BATCH_PREFIX).or_else(|| {
                    n.strip_prefix(UPLOAD_PREFIX)
                        .and_then(|r| r.strip_suffix(".tar"))
                })
            })
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 0 && pid_alive(pid) {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        } else {
            remove_if_present(&p)?;
        }
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
    /// The end of the ids reserved for it ([`Batch::begin_reserved`]); `None`: it takes the
    /// store's next ids and nothing may be added before it is committed.
    reserved: Option<u64>,
    staged: Vec<Sample>,
    backbone: String,
    dim: Option<usize>,
    committed: bool,
}

impl Batch {
    /// Write one sample into the staging folder (not yet durable, not yet in the store).
    pub fn stage(&mut self, capture: Capture) -> Result<u64, StoreError> {
        let id = self.first_id + self.staged.len() as u64;
        let sample = capture.sample(id, &self.backbone, self.dim)?;
        if self.reserved.is_some_and(|end| id >= end) {
            return Err(StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("more samples than ids were reserved"),
            });
        }
        self.dim = Some(sample.embedding.len());
        for (ext, bytes) in [
            ("jpg", capture.thumb_jpeg.to_vec()),
            ("rec", record_bytes(&sample)),
        ] {
            let p = self.dir.join(format!("{id:08}.{ext}"));
            std::fs::write(&p, bytes).map_err(io(&p))?;
        }
        self.staged.push(sample);
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

    /// The samples staged so far, without their embeddings.
    pub fn infos(&self) -> Vec<SampleInfo> {
        self.staged.iter().map(Sample::info).collect()
    }

    /// A batch staged in `state_dir` by a thread beside the store's owner (the web console's
    /// import), holding at most the ids `ids` (from [`IdReserver::reserve`], so captures made
    /// meanwhile never collide with it) and embeddings of `backbone`, `dim` long. The owner
    /// adds it with [`Store::commit_batch`].
    pub fn begin_reserved(
        state_dir: &Path,
        ids: Range<u64>,
        backbone: &str,
        dim: usize,
    ) -> Result<Batch, StoreError> {
        Ok(Batch {
            dir: fresh_batch_dir(state_dir)?,
            first_id: ids.start,
            reserved: Some(ids.end),
            staged: Vec::new(),
            backbone: backbone.to_string(),
            dim: Some(dim),
            committed: false,
        })
    }
}

/// Hands out sample ids to a batch staged beside the store's owner (see
/// [`Batch::begin_reserved`]); shares the store's counter.
#[derive(Debug, Clone)]
pub struct IdReserver(Arc<AtomicU64>);

impl IdReserver {
    /// `n` ids that no capture and no other batch will take.
    pub fn reserve(&self, n: u64) -> Range<u64> {
        let first = self.0.fetch_add(n, Ordering::SeqCst);
        first..first + n
    }
}

/// An empty staging folder for a batch of this process (`.batch-PID`; a leftover of an
/// earlier batch of the same process is removed first).
fn fresh_batch_dir(state_dir: &Path) -> Result<PathBuf, StoreError> {
    let dir = state_dir.join(format!("{BATCH_PREFIX}{}", std::process::id()));
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&dir)(e)),
    }
    std::fs::create_dir(&dir).map_err(io(&dir))?;
    Ok(dir)
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
        let dir = fresh_batch_dir(&self.dir)?;
        let dim = self.dim();
        Ok(Batch {
            dir,
            first_id: self.next_id.load(Ordering::SeqCst),
            reserved: None,
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
        let clash = match batch.reserved {
            None => batch.first_id != self.next_id.load(Ordering::SeqCst),
            Some(_) => {
                let ids: HashSet<u64> = self.samples.iter().map(|s| s.id).collect();
                batch.staged.iter().any(|s| ids.contains(&s.id))
            }
        };
        if clash {
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
            self.next_id.fetch_max(s.id + 1, Ordering::SeqCst);
            self.samples.push(s);
            added += 1;
        }
        // Captures made while a reserved batch was staged have higher ids: keep id order.
        self.samples.sort_by_key(|s| s.id);
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

/// The highest sample id named by a file in `dir` (`NNNNNNNN.rec`, `.jpg`, and quarantined
/// copies `NNNNNNNN.rec.2`); `None` when there is none or `dir` is absent.
fn highest_named_id(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let digits = name.get(..8)?;
            let rest = &name[8..];
            (digits.bytes().all(|b| b.is_ascii_digit())
                && (rest.starts_with(".rec") || rest.starts_with(".jpg")))
            .then(|| digits.parse().ok())
            .flatten()
        })
        .max()
}

/// Move the record `rec` (and its thumbnail, when present) into `STATE/quarantine/`, under a
/// name no earlier quarantine holds (`NAME`, else `NAME.2`, `NAME.3`, …): quarantined data is
/// kept, never overwritten. Returns where the record went.
fn quarantine(dir: &Path, rec: &Path) -> Result<PathBuf, StoreError> {
    let q = dir.join("quarantine");
    std::fs::create_dir_all(&q).map_err(io(&q))?;
    let name = rec
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let thumb = rec.with_extension("jpg");
    let thumb_name = thumb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // One suffix for both files, free for both (one writer: the state lock is held).
    let suffix = (1u64..)
        .map(|k| {
            if k == 1 {
                String::new()
            } else {
                format!(".{k}")
            }
        })
        .find(|sfx| {
            !q.join(format!("{name}{sfx}")).exists()
                && !q.join(format!("{thumb_name}{sfx}")).exists()
        })
        .unwrap_or_default();
    let target = q.join(format!("{name}{suffix}"));
    std::fs::rename(rec, &target).map_err(io(rec))?;
    if thumb.exists() {
        let t = q.join(format!("{thumb_name}{suffix}"));
        if let Err(e) = std::fs::rename(&thumb, &t) {
            log::warn!("thumbnail {} left in place: {e}", thumb.display());
        }
    }
    sync_dir(&q).map_err(io(&q))?;
    Ok(target)
}

fn read_journal(p: &Path) -> Result<Edit, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt {
        path: p.to_path_buf(),
        why,
    };
    let (meta, _) = framed::read(p, MAX_INDEX_FILE, JOURNAL_KIND, 1, |_| Ok(0))
        .map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_value(meta).map_err(|e| corrupt(e.to_string()))
}

fn read_classes(p: &Path) -> Result<Option<Vec<String>>, StoreError> {
    if !p.exists() {
        return Ok(None);
    }
    let corrupt = |why: String| StoreError::Corrupt {
        path: p.to_path_buf(),
        why,
    };
    let (meta, _) = framed::read(p, MAX_INDEX_FILE, CLASSES_KIND, 1, |_| Ok(0))
        .map_err(|e| corrupt(e.to_string()))?;
    let m: ClassesMeta = serde_json::from_value(meta).map_err(|e| corrupt(e.to_string()))?;
    for c in &m.classes {
        crate::frame::check_class_name(c).map_err(|why| corrupt(format!("class {c:?} {why}")))?;
    }
    Ok(Some(m.classes))
}

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
fn read_record_retrying(p: &Path) -> Result<Sample, StoreError> {
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

fn read_record(p: &Path) -> Result<Sample, StoreError> {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &Store) -> Vec<(u64, String)> {
        s.samples()
            .iter()
            .map(|s| (s.id, s.label.clone()))
            .collect()
    }

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
        s.apply(&Edit::delete(vec![b])).unwrap();
        assert!(
            !d.path().join("journal").exists(),
            "journal removed once done"
        );
        drop(s);
        let (s, _) = Store::open(d.path()).unwrap();
        assert_eq!(s.ids().into_iter().collect::<Vec<_>>(), vec![a]);
        drop(s);
        assert!(matches!(
            Store::open(d.path()).unwrap().0.add("x", &[1.0], b"", 0),
            Err(StoreError::Dim { .. })
        ));
    }

    /// One writer per state directory, and the refusal names the holder.
    #[test]
    fn a_second_writer_is_refused_naming_the_holder_until_the_first_closes() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let e = Store::open(d.path()).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("process {}", std::process::id())) && msg.contains("in use"),
            "{msg}"
        );
        drop(s);
        let (s, _) = Store::open(d.path()).unwrap();
        drop(s);
    }

    /// A checksum-valid record with an unusable embedding is
    /// quarantined at open (never loaded); quarantine never overwrites an earlier one, moves
    /// the thumbnail along, and the quarantined ids are never given again.
    #[test]
    fn unusable_embeddings_are_quarantined_without_overwriting_and_ids_are_not_reused() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        for i in 0..3 {
            s.add("a", &[1.0 + i as f32; 4], format!("t{i}").as_bytes(), i)
                .unwrap();
        }
        let poison = |s: &Store, id: u64, e: Vec<f32>| {
            let mut bad = s.samples().iter().find(|x| x.id == id).unwrap().clone();
            bad.embedding = e;
            write_record(d.path(), &bad).unwrap();
        };
        // The newest record gets a NaN: it is quarantined with its thumbnail.
        poison(&s, 3, vec![f32::NAN; 4]);
        drop(s);
        let (mut s, rep) = Store::open(d.path()).unwrap();
        assert_eq!(
            rep.quarantined,
            vec![d.path().join("quarantine/00000003.rec")]
        );
        assert!(d.path().join("quarantine/00000003.jpg").exists());
        assert!(
            s.samples()
                .iter()
                .all(|x| x.embedding.iter().all(|v| v.is_finite()))
        );
        // Its id is not reused: the next capture is 4, and 3's files stay as they were.
        assert_eq!(s.add("a", &[5.0; 4], b"new", 9).unwrap(), 4);
        // A second record of the same name in quarantine does not replace the first.
        let first = std::fs::read(d.path().join("quarantine/00000003.rec")).unwrap();
        std::fs::copy(
            d.path().join("quarantine/00000003.rec"),
            d.path().join("samples/00000003.rec"),
        )
        .unwrap();
        drop(s);
        let (s, rep) = Store::open(d.path()).unwrap();
        assert_eq!(
            rep.quarantined,
            vec![d.path().join("quarantine/00000003.rec.2")]
        );
        assert_eq!(
            std::fs::read(d.path().join("quarantine/00000003.rec")).unwrap(),
            first
        );
        // An infinite value and an empty embedding are refused too.
        poison(&s, 4, vec![f32::INFINITY; 4]);
        poison(&s, 2, Vec::new());
        drop(s);
        let (mut s, rep) = Store::open(d.path()).unwrap();
        assert_eq!(rep.quarantined.len(), 2);
        assert_eq!(s.ids().into_iter().collect::<Vec<_>>(), vec![1]);
        // Even with the index gone, no id still named in quarantine/ is given again.
        drop(s);
        std::fs::remove_file(d.path().join("index")).unwrap();
        let (mut t, _) = Store::open(d.path()).unwrap();
        assert_eq!(t.add("a", &[1.0; 4], b"later", 10).unwrap(), 5);
        s = t;
        // A record claiming the current backbone with another length is quarantined once
        // the backbone's dimension is known (before it could break every capture).
        s.set_backbone("bb");
        s.add("a", &[1.0; 4], b"four", 11).unwrap();
        let mut wrong = s.samples().last().unwrap().clone();
        wrong.id = 7;
        wrong.embedding = vec![1.0; 3];
        write_record(d.path(), &wrong).unwrap();
        drop(s);
        let (mut s, _) = Store::open(d.path()).unwrap();
        s.set_backbone("bb");
        let moved = s.quarantine_mismatched(4).unwrap();
        assert_eq!(moved, vec![d.path().join("quarantine/00000007.rec")]);
        assert!(s.samples().iter().all(|x| x.embedding.len() == 4));
    }

    #[test]
    fn torn_index_is_rebuilt_and_corrupt_records_quarantined() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        for i in 0..5 {
            s.add("a", &[1.0 + i as f32; 4], b"t", i).unwrap();
        }
        drop(s);
        // Tear the index and flip a byte in one record; leave stray temp files (ours, and
        // a user's file that only looks like one).
        let idx = d.path().join("index");
        let bytes = std::fs::read(&idx).unwrap();
        std::fs::write(&idx, &bytes[..bytes.len() / 2]).unwrap();
        let rec = d.path().join("samples/00000003.rec");
        let mut r = std::fs::read(&rec).unwrap();
        let n = r.len();
        r[n - 40] ^= 1;
        std::fs::write(&rec, r).unwrap();
        std::fs::write(d.path().join("samples/.00000006.rec.tmp123"), b"partial").unwrap();
        std::fs::write(d.path().join(".head.current.tmp77"), b"partial").unwrap();
        std::fs::write(d.path().join(".notes.tmp"), b"mine").unwrap();
        let (s, rep) = Store::open(d.path()).unwrap();
        assert!(rep.index_rebuilt);
        assert_eq!(rep.quarantined.len(), 1);
        assert_eq!(rep.temp_removed, 2);
        assert!(d.path().join(".notes.tmp").exists(), "not ours: kept");
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
        b.stage(Capture {
            label: "b",
            embedding: &[0.0, 1.0],
            thumb_jpeg: b"x",
            time_ms: 2,
        })
        .unwrap();
        assert!(matches!(
            b.stage(Capture {
                label: "b",
                embedding: &[0.0, 1.0, 2.0],
                thumb_jpeg: b"y",
                time_ms: 2,
            }),
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
            b.stage(Capture {
                label: "b",
                embedding: &[i as f32, 1.0],
                thumb_jpeg: format!("t{i}").as_bytes(),
                time_ms: 10 + i,
            })
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
    fn a_reserved_batch_staged_beside_captures_takes_ids_no_capture_takes() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        s.add("a", &[1.0, 0.0], b"first", 1).unwrap();
        let ids = s.id_reserver().reserve(3);
        assert_eq!(ids, 2..5);
        // Captures while the batch is staged (on another thread in the console) go after it.
        assert_eq!(s.add("a", &[1.0, 1.0], b"during", 2).unwrap(), 5);
        let mut b = Batch::begin_reserved(d.path(), ids, "", 2).unwrap();
        fn cap<'a>(embedding: &'a [f32], thumb_jpeg: &'a [u8], time_ms: u64) -> Capture<'a> {
            Capture {
                label: "b",
                embedding,
                thumb_jpeg,
                time_ms,
            }
        }
        for i in 0..3 {
            let thumb = format!("t{i}");
            b.stage(cap(&[i as f32, 1.0], thumb.as_bytes(), 10 + i))
                .unwrap();
        }
        assert!(
            b.stage(cap(&[9.0, 1.0], b"extra", 20)).is_err(),
            "no more than the ids reserved"
        );
        assert!(
            matches!(
                b.stage(cap(&[1.0], b"short", 20)),
                Err(StoreError::Dim { .. })
            ),
            "the dimension it was told"
        );
        assert_eq!(
            b.infos().iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(s.commit_batch(b).unwrap(), 3);
        assert_eq!(
            s.samples().iter().map(|x| x.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5],
            "kept in id order"
        );
        assert_eq!(s.add("c", &[0.5, 0.5], b"after", 3).unwrap(), 6);
        // A refused capture takes no id.
        assert!(s.add("bad/name", &[0.5, 0.5], b"x", 4).is_err());
        drop(s);
        let (s, rep) = Store::open(d.path()).unwrap();
        assert!(!rep.index_rebuilt, "the index was written in id order");
        assert_eq!(
            s.ids().into_iter().collect::<Vec<_>>(),
            (1..=6).collect::<Vec<_>>()
        );
        assert_eq!(s.thumbnail(3).unwrap(), b"t1");
        // Reserved ids never committed are not reused either.
        let r = s.id_reserver().reserve(2);
        assert_eq!(r, 7..9);
        let mut s = s;
        drop(Batch::begin_reserved(d.path(), r, "", 2).unwrap());
        assert_eq!(s.add("c", &[0.5, 0.5], b"later", 5).unwrap(), 9);
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
        // And an upload the web console of a dead process was checking.
        let upload = d.path().join(format!("{UPLOAD_PREFIX}{}.tar", i32::MAX));
        std::fs::write(&upload, b"tar").unwrap();
        let (s, rep) = Store::open(d.path()).unwrap();
        assert!(!dead.exists() && !upload.exists());
        assert_eq!((rep.temp_removed, s.samples().len()), (2, 0));
        // This process's upload is not touched.
        std::fs::write(upload_path(d.path()), b"tar").unwrap();
        drop(s);
        Store::open(d.path()).unwrap();
        assert!(upload_path(d.path()).exists());
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
        assert!(
            s.thumbnail(id)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        assert!(matches!(s.thumbnail(99), Err(StoreError::NoSample(99))));
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
            backbone: Default::default(),
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

    #[test]
    fn edits_relabel_delete_and_keep_the_class_list() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        assert_eq!(s.classes(), None);
        for (i, l) in ["a", "b", "a", "c"].iter().enumerate() {
            s.add(l, &[1.0 + i as f32], b"t", i as u64).unwrap();
        }
        let edit = Edit {
            relabel: vec![(1, "z".into()), (3, "z".into())],
            delete: vec![4],
            classes: Some(vec!["z".into(), "b".into()]),
        };
        s.apply(&edit).unwrap();
        let want = vec![(1, "z".to_string()), (2, "b".into()), (3, "z".into())];
        assert_eq!(labels(&s), want);
        drop(s);
        let (s, rep) = Store::open(d.path()).unwrap();
        assert!(!rep.edit_completed && !rep.index_rebuilt);
        assert_eq!(labels(&s), want);
        assert_eq!(s.classes().unwrap(), ["z", "b"]);
        // Unknown samples and bad labels are refused and change nothing.
        let mut s = s;
        assert!(matches!(
            s.apply(&Edit::delete(vec![1, 42])),
            Err(StoreError::NoSample(42))
        ));
        let bad = Edit {
            relabel: vec![(1, "a/b".into())],
            ..Edit::default()
        };
        assert!(matches!(s.apply(&bad), Err(StoreError::BadLabel { .. })));
        assert_eq!(labels(&s), want);
    }

    #[test]
    fn a_crash_after_the_journal_is_completed_at_the_next_open() {
        // Simulate a kill after the commit point: the journal is written and only the first
        // record was relabelled before the process died.
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(d.path()).unwrap();
        for i in 0..4 {
            s.add("old", &[1.0 + i as f32], b"t", i).unwrap();
        }
        drop(s);
        let edit = Edit {
            relabel: vec![(1, "new".into()), (2, "new".into())],
            delete: vec![3],
            classes: Some(vec!["new".into()]),
        };
        let meta = serde_json::to_value(&edit).unwrap();
        atomic_write(
            &d.path().join("journal"),
            &framed::encode(JOURNAL_KIND, 1, &meta, &[]),
        )
        .unwrap();
        let first = Edit {
            relabel: vec![(1, "new".into())],
            ..Edit::default()
        };
        complete(d.path(), &first).unwrap();
        let (s, rep) = Store::open(d.path()).unwrap();
        assert!(rep.edit_completed);
        assert!(!d.path().join("journal").exists());
        assert_eq!(
            labels(&s),
            vec![(1, "new".into()), (2, "new".into()), (4, "old".into())]
        );
        assert_eq!(s.classes().unwrap(), ["new"]);
        // Completing again (a second crash during completion) changes nothing more.
        complete(d.path(), &edit).unwrap();
        let before = labels(&s);
        drop(s);
        let (s2, _) = Store::open(d.path()).unwrap();
        assert_eq!(labels(&s2), before);
        drop(s2);
        // A journal that fails its checksum is not guessed at: the open names it.
        std::fs::write(d.path().join("journal"), b"teachcam-journal 1\n{}\nxx").unwrap();
        let e = Store::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("journal") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn io_failures_are_classified_for_the_appliance() {
        let full = StoreError::Io {
            path: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let ro = StoreError::Io {
            path: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem),
        };
        assert_eq!(full.cause(), Cause::DiskFull);
        assert_eq!(ro.cause(), Cause::ReadOnly);
        assert_eq!(StoreError::NoSample(1).cause(), Cause::Other);
    }
}
