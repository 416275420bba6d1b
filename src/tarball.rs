//! The bounded, validating tar reader behind `teachcam dataset import`.
//!
//! Reads the ustar/GNU header blocks of a tarball without reading any file data, checks
//! every header (checksum, magic, type, name, size) and bounds the entry count, each entry's
//! size and their total before anything is allocated for data; afterwards single entries are
//! read on demand by offset, so memory never holds more than one entry.
//!
//! Invariants:
//! - Only regular files and directories are accepted. Symbolic and hard links, devices,
//!   FIFOs, GNU sparse files, GNU long names and PAX headers are refused by name (a sparse
//!   entry can claim gigabytes of zeros from a few bytes; links and long-name blocks hide
//!   what is really written or read).
//! - Every size is checked against the file: an entry whose data would run past the end is
//!   "truncated", never read short.
//! - Entry names are relative UTF-8 paths without `..`, empty or control characters; a
//!   leading `./` is dropped; a name appears once.
//! - Error messages name byte offsets and checked names, never other bytes of the input
//!   (importing `/etc/passwd` must not print it).
//!
//! Must not: know what the entries mean (`dataset` does), write anything.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

const BLOCK: u64 = 512;

/// Bounds applied while reading headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files and directories).
    pub max_entries: usize,
    /// Largest single file.
    pub max_entry: u64,
    /// Largest sum of all file sizes.
    pub max_total: u64,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory (no data).
    Dir,
}

/// One checked entry: where its data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, `./` dropped, no trailing `/`.
    pub name: String,
    /// File or directory.
    pub kind: Kind,
    /// Byte offset of the data in the tarball.
    pub offset: u64,
    /// Data length.
    pub size: u64,
}

/// Why a tarball was refused. Offsets are of the header block involved.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A header block is not a tar header.
    #[error(
        "the block at byte {offset} is not a tar header ({why}); is this a tarball from `teachcam dataset export`?"
    )]
    NotTar {
        /// Offset of the block.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The data stops early.
    #[error("the tarball is truncated (it ends inside the entry at byte {offset})")]
    Truncated {
        /// Offset of the header of the entry cut off, or of the missing end marker.
        offset: u64,
    },
    /// An entry type other than a regular file or directory.
    #[error("entry at byte {offset} is {what}; only regular files and directories are accepted")]
    Type {
        /// Offset of its header.
        offset: u64,
        /// What the entry is.
        what: &'static str,
    },
    /// A name that is not a plain relative path.
    #[error("entry at byte {offset} has an unsafe or unreadable name ({why})")]
    Name {
        /// Offset of its header.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The same name twice.
    #[error("entry {name} appears twice")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// A bound was exceeded.
    #[error("{what} exceeds the limit of {limit}")]
    Limit {
        /// What was counted.
        what: String,
        /// The bound.
        limit: u64,
    },
}

/// The checked headers of a tarball.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Entries in tarball order.
    pub entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl Index {
    /// The entry named `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }
}

/// Parse an octal numeric field (leading spaces/zeros, ended by NUL or space).
fn octal(field: &[u8]) -> Option<u64> {
    let s = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ');
    let mut v: u64 = 0;
    let mut any = false;
    for &b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

fn c_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// A safe relative name from raw header bytes.
fn clean_name(raw: &[u8]) -> Result<String, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "not UTF-8")?;
    if s.chars().any(char::is_control) {
        return Err("control characters");
    }
    if s.starts_with('/') {
        return Err("absolute path");
    }
    let mut parts = Vec::new();
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("`..` component"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("empty");
    }
    Ok(parts.join("/"))
}

/// What a type flag names, for refusals.
fn type_name(flag: u8) -> &'static str {
    match flag {
        b'1' => "a hard link",
        b'2' => "a symbolic link",
        b'3' => "a character device",
        b'4' => "a block device",
        b'6' => "a FIFO",
        b'7' => "a contiguous file",
        b'S' => "a GNU sparse file",
        b'L' | b'K' => "a GNU long-name block",
        b'x' | b'g' => "a PAX extended header",
        b'V' | b'M' | b'N' | b'D' => "a GNU extension entry",
        _ => "an unknown entry type",
    }
}

/// Read and check every header of the tarball `r` (`len` bytes long). No file data is read.
pub fn index<R: Read + Seek>(r: &mut R, len: u64, limits: &Limits) -> Result<Index, TarError> {
    let mut idx = Index::default();
    let mut pos = 0u64;
    let mut total = 0u64;
    let mut block = [0u8; BLOCK as usize];
    if len < BLOCK {
        return Err(TarError::NotTar {
            offset: 0,
            why: "shorter than one tar block",
        });
    }
    loop {
        if pos + BLOCK > len {
            return Err(TarError::Truncated { offset: pos });
        }
        r.seek(SeekFrom::Start(pos))?;
        r.read_exact(&mut block)?;
        if block.iter().all(|&b| b == 0) {
            // End-of-archive marker; what follows (the second zero block, record padding)
            // is not read.
            return Ok(idx);
        }
        let h = &block;
        let not_tar = |why| TarError::NotTar { offset: pos, why };
        // Checksum first: nothing of a block that is not a header is interpreted further.
        let want = octal(&h[148..156]).ok_or_else(|| not_tar("no checksum"))?;
        let unsigned: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        if want != unsigned && i64::try_from(want).ok() != Some(signed) {
            return Err(not_tar("checksum mismatch"));
        }
        let posix = &h[257..265] == b"ustar\x0000";
        let gnu = &h[257..265] == b"ustar  \x00";
        if !posix && !gnu {
            return Err(not_tar("not ustar or GNU format"));
        }
        let flag = h[156];
        let kind = match flag {
            b'0' | 0 => Kind::File,
            b'5' => Kind::Dir,
            f => {
                return Err(TarError::Type {
                    offset: pos,
                    what: type_name(f),
                });
            }
        };
        if h[124] & 0x80 != 0 {
            return Err(TarError::Limit {
                what: format!("entry at byte {pos} (base-256 size)"),
                limit: limits.max_entry,
            });
        }
        let size = octal(&h[124..136]).ok_or_else(|| not_tar("bad size field"))?;
        let mut raw = Vec::with_capacity(256);
        let prefix = c_str(&h[345..500]);
        if posix && !prefix.is_empty() {
            raw.extend_from_slice(prefix);
            raw.push(b'/');
        }
        raw.extend_from_slice(c_str(&h[0..100]));
        let name = clean_name(&raw).map_err(|why| TarError::Name { offset: pos, why })?;
        if kind == Kind::File && size > limits.max_entry {
            return Err(TarError::Limit {
                what: format!("entry {name} ({size} bytes)"),
                limit: limits.max_entry,
            });
        }
        total = total.saturating_add(size);
        if total > limits.max_total {
            return Err(TarError::Limit {
                what: "the total size of the entries".into(),
                limit: limits.max_total,
            });
        }
        if idx.entries.len() >= limits.max_entries {
            return Err(TarError::Limit {
                what: "the number of entries".into(),
                limit: limits.max_entries as u64,
            });
        }
        let offset = pos + BLOCK;
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(TarError::Truncated { offset: pos });
        }
        if idx.by_name.contains_key(&name) {
            return Err(TarError::Duplicate { name });
        }
        idx.by_name.insert(name.clone(), idx.entries.len());
        idx.entries.push(Entry {
            name,
            kind,
            offset,
            size,
        });
        pos = offset + size.div_ceil(BLOCK) * BLOCK;
    }
}

/// Read one file entry's data (its size was bounded by [`index`]).
pub fn read_entry<R: Read + Seek>(r: &mut R, e: &Entry) -> Result<Vec<u8>, TarError> {
    r.seek(SeekFrom::Start(e.offset))?;
    let mut buf = Vec::with_capacity(usize::try_from(e.size).unwrap_or(0));
    r.take(e.size).read_to_end(&mut buf)?;
    if buf.len() as u64 != e.size {
        return Err(TarError::Truncated {
            offset: e.offset - BLOCK,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const LIM: Limits = Limits {
        max_entries: 16,
        max_entry: 1 << 20,
        max_total: 4 << 20,
    };

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn idx(bytes: &[u8]) -> Result<Index, TarError> {
        index(&mut Cursor::new(bytes), bytes.len() as u64, &LIM)
    }

    /// Rewrite the header at `at` with `edit`, fixing its checksum.
    fn patch(bytes: &mut [u8], at: usize, edit: impl FnOnce(&mut [u8])) {
        let h = &mut bytes[at..at + 512];
        edit(h);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn reads_what_the_builder_writes() {
        let bytes = tar_of(&[("d/a.txt", b"hello"), ("./d/b.bin", &[7u8; 700])]);
        let ix = idx(&bytes).unwrap();
        assert_eq!(ix.entries.len(), 2);
        let b = ix.get("d/b.bin").unwrap();
        assert_eq!(
            read_entry(&mut Cursor::new(&bytes), b).unwrap(),
            vec![7u8; 700]
        );
        assert_eq!(
            read_entry(&mut Cursor::new(&bytes), ix.get("d/a.txt").unwrap()).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn every_other_entry_type_is_refused_by_name() {
        for (flag, what) in [
            (b'2', "symbolic link"),
            (b'1', "hard link"),
            (b'3', "character device"),
            (b'S', "sparse"),
            (b'L', "long-name"),
            (b'x', "PAX"),
            (b'6', "FIFO"),
        ] {
            let mut bytes = tar_of(&[("a", b"x")]);
            patch(&mut bytes, 0, |h| h[156] = flag);
            let e = idx(&bytes).unwrap_err().to_string();
            assert!(e.contains(what), "{flag}: {e}");
        }
    }

    #[test]
    fn sizes_are_bounded_before_anything_is_read() {
        // A header claiming 8 GB in a 2 KB file: refused by the per-entry bound.
        let mut bytes = tar_of(&[("a", b"x")]);
        patch(&mut bytes, 0, |h| {
            h[124..136].copy_from_slice(b"77777777777\0")
        });
        assert!(matches!(idx(&bytes), Err(TarError::Limit { .. })));
        // Within the bound but past the end of the file: truncated.
        let mut bytes = tar_of(&[("a", b"x")]);
        patch(&mut bytes, 0, |h| {
            h[124..136].copy_from_slice(b"00000100000\0")
        });
        assert!(matches!(
            idx(&bytes),
            Err(TarError::Truncated { offset: 0 })
        ));
        // Too many entries, and too much in total.
        let many: Vec<(String, Vec<u8>)> = (0..17).map(|i| (format!("f{i}"), vec![])).collect();
        let refs: Vec<(&str, &[u8])> = many
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        assert!(
            idx(&tar_of(&refs))
                .unwrap_err()
                .to_string()
                .contains("number of entries")
        );
        let big = vec![1u8; 1 << 20];
        let five: Vec<(String, &[u8])> =
            (0..5).map(|i| (format!("b{i}"), big.as_slice())).collect();
        let refs: Vec<(&str, &[u8])> = five.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        assert!(
            idx(&tar_of(&refs))
                .unwrap_err()
                .to_string()
                .contains("total size")
        );
        // Base-256 sizes are never needed here.
        let mut bytes = tar_of(&[("a", b"x")]);
        patch(&mut bytes, 0, |h| h[124] = 0x80);
        assert!(matches!(idx(&bytes), Err(TarError::Limit { .. })));
    }

    #[test]
    fn unsafe_names_duplicates_and_truncation_are_refused() {
        for (name, why) in [("../x", ".."), ("/etc/x", "absolute"), ("a\nb", "control")] {
            let mut bytes = tar_of(&[("placeholder", b"x")]);
            patch(&mut bytes, 0, |h| {
                h[..100].fill(0);
                h[..name.len()].copy_from_slice(name.as_bytes());
            });
            let e = idx(&bytes).unwrap_err().to_string();
            assert!(e.contains(why), "{name:?}: {e}");
        }
        let bytes = tar_of(&[("a", b"1"), ("./a", b"2")]);
        assert!(matches!(idx(&bytes), Err(TarError::Duplicate { .. })));
        let bytes = tar_of(&[("a", &[5u8; 2000])]);
        for cut in [0, 100, 512, 1500, 2560] {
            assert!(idx(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_text_file_is_not_a_tarball_and_is_not_echoed() {
        let passwd =
            b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                .repeat(20);
        let e = idx(&passwd).unwrap_err().to_string();
        assert!(
            e.contains("byte 0") && !e.contains("root") && !e.contains("daemon"),
            "{e}"
        );
    }
}
