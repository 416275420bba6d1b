//! Batches: many samples staged in a folder beside the store (`.batch-PID`) with ids reserved
//! through an [`IdReserver`], committed with renames and one index write; uploads waiting to
//! be imported (`.upload-PID.tar`); staging left by a dead process removed at open.
//!
//! Must not: verify what is staged (the importer does before staging).

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{StoreError, io};
use super::files::remove_if_present;
use super::record::{Capture, Sample, SampleInfo, record_bytes};
use super::{OpenReport, Store};
use crate::fsutil::sync_dir;

/// Prefix of a batch's staging folder in the state directory (`.batch-PID`).
pub(super) const BATCH_PREFIX: &str = ".batch-";
/// Prefix of an uploaded tarball waiting to be imported (`.upload-PID.tar`).
pub(super) const UPLOAD_PREFIX: &str = ".upload-";

/// Where this process keeps a dataset upload (the web console's) while it is verified and
/// staged; removed by the uploader, or at the next open once this process is gone.
pub fn upload_path(state_dir: &Path) -> PathBuf {
    state_dir.join(format!("{UPLOAD_PREFIX}{}.tar", std::process::id()))
}

/// Remove staging folders of batches whose process is gone (it was killed before its
/// commit: nothing in them was acknowledged).
pub(super) fn remove_abandoned_batches(
    dir: &Path,
    report: &mut OpenReport,
) -> Result<(), StoreError> {
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
pub(super) fn pid_alive(pid: i32) -> bool {
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
pub struct IdReserver(pub(super) Arc<AtomicU64>);

impl IdReserver {
    /// `n` ids that no capture and no other batch will take.
    pub fn reserve(&self, n: u64) -> Range<u64> {
        let first = self.0.fetch_add(n, Ordering::SeqCst);
        first..first + n
    }
}

/// An empty staging folder for a batch of this process (`.batch-PID`; a leftover of an
/// earlier batch of the same process is removed first).
pub(super) fn fresh_batch_dir(state_dir: &Path) -> Result<PathBuf, StoreError> {
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
pub(super) fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
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
