//! Crash-safe file writes and content hashing.
//!
//! Owns the one way this program replaces a file: write a sibling temp file, `fsync` it,
//! `rename` it over the target, then `fsync` the directory. A reader therefore sees either
//! the old complete file or the new complete file, never a torn one, even on power loss.
//!
//! Invariants:
//! - Only regular files are replaced. A destination that is a symlink is followed (the file
//!   it points to is replaced and the link stays); one that is a device, a directory, a FIFO
//!   or a socket is refused with an error saying what it is (`--out /dev/null` as root must
//!   not turn `/dev/null` into a regular file).
//! - Temp files carry a name no user would pick (`.NAME.teachcam-tmp.PID.N`, see
//!   [`is_temp_name`]), are created exclusively (never through an existing file or link),
//!   and only names that match it are ever deleted as leftovers.
//!
//! Must not: decide formats or paths (callers do).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The marker inside every temp file name this program makes.
const TEMP_MARK: &str = ".teachcam-tmp.";

/// Symbolic links followed before a destination is refused (as the kernel's ELOOP limit).
const MAX_LINK_HOPS: usize = 40;

/// Per-process counter so two writes of one path from two threads never share a temp file.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Atomically replace `path` with `bytes` (temp file + fsync + rename + directory fsync).
///
/// When `path` is a symlink the file it points to is replaced. When it exists and is not a
/// regular file, nothing is written and the error says what it is. An existing file's
/// permission bits are kept.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write_with(path, |f| f.write_all(bytes))
}

/// [`atomic_write`] for content produced by `fill` (streamed into the temp file, so a large
/// output never has to be held in memory).
pub fn atomic_write_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let target = resolve_destination(path)?;
    let keep_mode = fs::metadata(&target).ok().map(|m| m.permissions().mode());
    let dir = parent_dir(&target);
    let tmp = temp_path(&target)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&tmp)?;
        if let Some(mode) = keep_mode {
            f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        }
        fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is harmless (its name marks it as ours).
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The regular file `path` stands for: itself, or the end of its chain of symlinks. Absent
/// is fine (a new file is made there); anything that exists and is not a regular file is
/// an error naming what it is.
pub fn resolve_destination(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINK_HOPS {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let to = fs::read_link(&p)?;
            p = if to.is_absolute() {
                to
            } else {
                parent_dir(&p).join(to)
            };
            continue;
        }
        if ft.is_file() {
            return Ok(p);
        }
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        let via = if p == path {
            String::new()
        } else {
            format!(" (where the link {} points)", path.display())
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}{via} is {kind}; refusing to replace it with a regular file (name a regular file or a new path)",
                p.display()
            ),
        ));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: more than {MAX_LINK_HOPS} symbolic links (a loop?)",
            path.display()
        ),
    ))
}

/// A fresh temp path beside `target`: `.NAME.teachcam-tmp.PID.N` (for a file or a folder
/// that is renamed into place once complete).
pub fn temp_path(target: &Path) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        "{TEMP_MARK}{}.{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(parent_dir(target).join(tmp_name))
}

/// True for names [`atomic_write`] gives its temp files (`.NAME.teachcam-tmp.PID.N`): the
/// only names a cleanup may delete as leftovers of an interrupted write.
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some(at) = rest.rfind(TEMP_MARK) else {
        return false;
    };
    let (stem, tail) = (&rest[..at], &rest[at + TEMP_MARK.len()..]);
    let mut parts = tail.split('.');
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    !stem.is_empty() && digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Read a whole file of at most `max` bytes; a larger one (or an endless one such as
/// `/dev/zero`) is refused after reading `max + 1` bytes, never read to the end.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let hint = f.metadata().map(|m| m.len()).unwrap_or(0).min(max);
    let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {max} bytes, more than this kind of file can be",
                path.display()
            ),
        ));
    }
    Ok(buf)
}

/// `fsync` a directory so that a rename inside it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// SHA-256 of a byte slice, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a file's contents, as lowercase hex, streamed (models are several MB).
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_hex(b"abc"));
    }

    #[test]
    fn a_symlink_is_followed_and_kept_and_the_file_keeps_its_mode() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.json");
        fs::write(&real, b"old").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        atomic_write(&link, b"new").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A dangling link: the file is created where it points.
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("made.txt"), &dangling).unwrap();
        atomic_write(&dangling, b"x").unwrap();
        assert_eq!(fs::read(d.path().join("made.txt")).unwrap(), b"x");
        // A loop is refused, not followed forever.
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = atomic_write(&a, b"x").unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let e = atomic_write(Path::new("/dev/null"), b"x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/null") && e.contains("character device"),
            "{e}"
        );
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let sub = d.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let e = atomic_write(&sub, b"x").unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let link = d.path().join("to-null");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let e = atomic_write(&link, b"x").unwrap_err().to_string();
        assert!(
            e.contains("where the link") && e.contains("character device"),
            "{e}"
        );
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = atomic_write(&fifo, b"x").unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        // Nothing was left behind beside them.
        let names: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !is_temp_name(n)), "{names:?}");
    }

    #[test]
    fn bounded_reads_stop_at_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, b"12345").unwrap();
        assert_eq!(read_bounded(&p, 5).unwrap(), b"12345");
        assert!(read_bounded(&p, 4).is_err());
        // An endless file is not read to its end.
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn temp_names_are_unmistakable() {
        let d = tempfile::tempdir().unwrap();
        let t = temp_path(&d.path().join("00000001.rec")).unwrap();
        let name = t.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_name(name), "{name}");
        for user in [
            ".my.tmpnotes",
            ".notes.tmp123",
            "x.teachcam-tmp.1.2",
            ".x.teachcam-tmp.1",
            ".x.teachcam-tmp.1.2.3",
            ".x.teachcam-tmp.a.2",
            "..teachcam-tmp.1.2",
        ] {
            assert!(!is_temp_name(user), "{user} is a user's file");
        }
    }
}
