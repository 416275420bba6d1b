//! The state directory's housekeeping: the writer's lock (`STATE/lock`), temp files of
//! interrupted writes, the highest id any file names, and quarantine (kept, never deleted,
//! never overwritten).
//!
//! Must not: read or write records (see `record.rs`).

use std::path::{Path, PathBuf};

use super::error::{StoreError, io};
use crate::fsutil::sync_dir;

/// Files at the top of the state directory that this program writes (atomically, so a
/// leftover temp file of one of these is an interrupted write and safe to remove).
pub(super) const OWN_FILES: [&str; 5] = [
    "index",
    "classes",
    "journal",
    "head.current",
    "head.previous",
];

/// Take the state directory's writer lock (see the module docs), or say who holds it.
pub(super) fn lock_state(dir: &Path) -> Result<Option<std::fs::File>, StoreError> {
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
pub(super) fn is_temp_of(name: &str, own: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_prefix(own)) else {
        return false;
    };
    if crate::fsutil::is_temp_name(name) && rest.starts_with(".teachcam-tmp.") {
        return true;
    }
    rest.strip_prefix(".tmp")
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn remove_if_present(p: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(p)(e)),
    }
}

/// Remove leftover temp files of this program's own top-level files (nothing else).
pub(super) fn remove_own_temps(dir: &Path) -> Result<usize, StoreError> {
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

/// Leftover temp files: [`crate::fsutil::is_temp_name`], and the names earlier versions gave
/// their temp files (`.00000042.rec.tmp1234`), matched exactly.
pub(super) fn is_leftover_temp(name: &str) -> bool {
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

/// The highest sample id named by a file in `dir` (`NNNNNNNN.rec`, `.jpg`, and quarantined
/// copies `NNNNNNNN.rec.2`); `None` when there is none or `dir` is absent.
pub(super) fn highest_named_id(dir: &Path) -> Option<u64> {
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
pub(super) fn quarantine(dir: &Path, rec: &Path) -> Result<PathBuf, StoreError> {
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
