//! The inbox: a small ring of frames the appliance was unsure of, kept so the user can label
//! them with one click (they become samples) or dismiss them.
//!
//! Layout, beside the store's files in the state directory:
//! ```text
//! STATE/inbox/00000007.jpg   the frame's thumbnail, written first
//! STATE/inbox/00000007.rec   its record (framed: JSON meta + embedding, SHA-256): the commit
//!                            point; an item is in the inbox once this exists
//! ```
//! Bounded: at most `capacity` items (the oldest go first) of at most [`MAX_THUMB_BYTES`]
//! thumbnail bytes each, so the folder never holds more than `capacity` × (thumbnail +
//! record). Every write is atomic; a torn, corrupt or foreign file found at open is removed
//! with a warning (inbox frames are suggestions, not what the user taught), and so are frames
//! embedded by another backbone (they could not become samples of this one).
//!
//! Thread-safe behind one mutex: a writer thread adds, the web console lists, shows and
//! dismisses, the loop takes an item to store it as a sample. None of these wait on the
//! camera loop, and the loop never waits on them: the shell hands frames to the writer
//! through a bounded queue that drops when full.
//!
//! Must not: decide which frames are unsure (the appliance core does) or touch the store.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::framed;
use crate::fsutil;

const KIND: &str = "teachcam-inbox";
/// Largest thumbnail kept or read back.
pub const MAX_THUMB_BYTES: usize = 1 << 20;
/// Largest record read (a header and 4 bytes per embedding dimension).
const MAX_RECORD: u64 = 1 << 20;
/// Most items an inbox may be configured to hold.
pub const MAX_CAPACITY: usize = 1000;

/// Why a frame went to the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The head's best class was below the threshold ("unknown").
    Unknown,
    /// The best class only just beat the second.
    LowMargin,
    /// The answer changed from the previous frame's.
    Flip,
}

impl Reason {
    /// Its name in the API and on the page.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unknown => "unknown",
            Reason::LowMargin => "low-margin",
            Reason::Flip => "flip",
        }
    }
}

/// What the inbox keeps of a frame besides its pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Inbox id (file name); never reused while the inbox exists.
    pub id: u64,
    /// When it was seen, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Why it is here.
    pub reason: Reason,
    /// The head's best class for it (shown even when below the threshold).
    pub guess: Option<String>,
    /// The best class's probability.
    pub confidence: f32,
    /// The backbone digest of its embedding.
    pub backbone: String,
    /// SHA-256 of its thumbnail.
    pub thumb_sha256: String,
    /// Embedding length.
    pub dim: usize,
}

/// An unsure frame on its way in: the thumbnail and embedding of the frame, and why.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// JPEG thumbnail.
    pub thumb_jpeg: &'a [u8],
    /// The backbone's embedding of the frame.
    pub embedding: &'a [f32],
    /// Why it is unsure.
    pub reason: Reason,
    /// The head's best class.
    pub guess: Option<String>,
    /// Its probability.
    pub confidence: f32,
    /// When, milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Why the inbox could not do something. Each variant names the file or item.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// A filesystem operation failed.
    #[error("inbox {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// No such item (dismissed, labelled or pushed out meanwhile).
    #[error("there is no inbox frame {0}")]
    Missing(u64),
    /// The thumbnail is larger than an inbox keeps.
    #[error("inbox thumbnail of {0} bytes is larger than {MAX_THUMB_BYTES}")]
    TooLarge(usize),
    /// An item's file failed its checksum or does not parse.
    #[error("inbox frame {path} is damaged ({why})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InboxError + '_ {
    move |source| InboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Inner {
    /// Oldest first.
    items: Vec<Item>,
    next_id: u64,
}

/// The inbox of one state directory (see the module docs).
pub struct Inbox {
    dir: PathBuf,
    backbone: String,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl Inbox {
    /// Open (creating) `STATE/inbox` for frames embedded by `backbone`, holding at most
    /// `capacity` (1..=[`MAX_CAPACITY`]) items. Damaged, foreign and other-backbone items
    /// found there are removed; what remains beyond `capacity` too, oldest first.
    pub fn open(state_dir: &Path, backbone: &str, capacity: usize) -> Result<Inbox, InboxError> {
        let dir = state_dir.join("inbox");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut items = Vec::new();
        let mut highest = 0;
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for p in &names {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let id = name.get(..8).and_then(|s| s.parse::<u64>().ok());
            highest = highest.max(id.unwrap_or(0));
            if !name.ends_with(".rec") || name.len() != 12 {
                continue;
            }
            match read_item(p) {
                Ok(item) if item.backbone == backbone && Some(item.id) == id => items.push(item),
                Ok(_) => {
                    log::info!(
                        "inbox: {} was embedded by another backbone; removed",
                        p.display()
                    );
                    remove_item_files(&dir, id.unwrap_or(0));
                }
                Err(e) => {
                    log::warn!("{e}; removed");
                    remove_item_files(&dir, id.unwrap_or(0));
                }
            }
        }
        // Thumbnails without a record (a write interrupted before its commit point), and
        // leftover temp files of interrupted writes.
        for p in &names {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let orphan =
                name.ends_with(".jpg") && !items.iter().any(|i| format!("{:08}.jpg", i.id) == name);
            if orphan || fsutil::is_temp_name(name) {
                let _ = std::fs::remove_file(p);
            }
        }
        items.sort_by_key(|i| i.id);
        let inbox = Inbox {
            dir,
            backbone: backbone.to_string(),
            capacity: capacity.clamp(1, MAX_CAPACITY),
            inner: Mutex::new(Inner {
                items,
                next_id: highest + 1,
            }),
        };
        inbox.trim()?;
        Ok(inbox)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove the oldest items beyond the capacity.
    fn trim(&self) -> Result<(), InboxError> {
        let gone: Vec<u64> = {
            let mut g = self.lock();
            let extra = g.items.len().saturating_sub(self.capacity);
            g.items.drain(..extra).map(|i| i.id).collect()
        };
        for id in gone {
            remove_item_files(&self.dir, id);
        }
        Ok(())
    }

    /// Keep an unsure frame; the oldest goes when the inbox is full. Returns its id.
    pub fn add(&self, e: &Entry) -> Result<u64, InboxError> {
        if e.thumb_jpeg.len() > MAX_THUMB_BYTES {
            return Err(InboxError::TooLarge(e.thumb_jpeg.len()));
        }
        let id = {
            let mut g = self.lock();
            g.next_id += 1;
            g.next_id - 1
        };
        let item = Item {
            id,
            time_ms: e.time_ms,
            reason: e.reason,
            guess: e.guess.clone(),
            confidence: e.confidence,
            backbone: self.backbone.clone(),
            thumb_sha256: fsutil::sha256_hex(e.thumb_jpeg),
            dim: e.embedding.len(),
        };
        let jpg = self.dir.join(format!("{id:08}.jpg"));
        fsutil::atomic_write(&jpg, e.thumb_jpeg).map_err(io(&jpg))?;
        let rec = self.dir.join(format!("{id:08}.rec"));
        let meta = serde_json::to_value(&item).unwrap_or_default();
        if let Err(err) = fsutil::atomic_write(&rec, &framed::encode(KIND, 1, &meta, e.embedding)) {
            let _ = std::fs::remove_file(&jpg);
            return Err(InboxError::Io {
                path: rec,
                source: err,
            });
        }
        self.lock().items.push(item);
        self.trim()?;
        Ok(id)
    }

    /// Items, oldest first.
    pub fn items(&self) -> Vec<Item> {
        self.lock().items.clone()
    }

    /// How many frames wait.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Item `id`'s thumbnail, checked against its record.
    pub fn thumbnail(&self, id: u64) -> Result<Vec<u8>, InboxError> {
        let item = self.item(id)?;
        let p = self.dir.join(format!("{id:08}.jpg"));
        let bytes = fsutil::read_bounded(&p, MAX_THUMB_BYTES as u64).map_err(io(&p))?;
        if fsutil::sha256_hex(&bytes) != item.thumb_sha256 {
            return Err(InboxError::Corrupt {
                path: p,
                why: "does not match its record".into(),
            });
        }
        Ok(bytes)
    }

    fn item(&self, id: u64) -> Result<Item, InboxError> {
        self.lock()
            .items
            .iter()
            .find(|i| i.id == id)
            .cloned()
            .ok_or(InboxError::Missing(id))
    }

    /// Item `id` with its embedding and thumbnail, read back and verified (to store it as a
    /// sample; [`Inbox::remove`] it once stored).
    pub fn get(&self, id: u64) -> Result<(Item, Vec<f32>, Vec<u8>), InboxError> {
        let item = self.item(id)?;
        let thumb = self.thumbnail(id)?;
        let rec = self.dir.join(format!("{id:08}.rec"));
        let read = read_record(&rec)?;
        Ok((item, read.1, thumb))
    }

    /// Forget item `id` (dismissed, or stored as a sample).
    pub fn remove(&self, id: u64) -> Result<(), InboxError> {
        {
            let mut g = self.lock();
            let before = g.items.len();
            g.items.retain(|i| i.id != id);
            if g.items.len() == before {
                return Err(InboxError::Missing(id));
            }
        }
        remove_item_files(&self.dir, id);
        Ok(())
    }

    /// Forget every item; how many went.
    pub fn clear(&self) -> usize {
        let gone: Vec<u64> = self.lock().items.drain(..).map(|i| i.id).collect();
        for &id in &gone {
            remove_item_files(&self.dir, id);
        }
        gone.len()
    }
}

/// Record first (the commit point), then the thumbnail.
fn remove_item_files(dir: &Path, id: u64) {
    for ext in ["rec", "jpg"] {
        let p = dir.join(format!("{id:08}.{ext}"));
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("inbox: cannot remove {}: {e}", p.display());
        }
    }
}

fn read_record(p: &Path) -> Result<(Item, Vec<f32>), InboxError> {
    let corrupt = |why: String| InboxError::Corrupt {
        path: p.to_path_buf(),
        why,
    };
    let (meta, emb) = framed::read(p, MAX_RECORD, KIND, 1, |m| {
        framed::meta_usize(m, "dim").ok_or_else(|| "no dim".to_string())
    })
    .map_err(|e| corrupt(e.to_string()))?;
    let item: Item = serde_json::from_value(meta).map_err(|e| corrupt(e.to_string()))?;
    if crate::embedding::check(&emb, Some(item.dim)).is_err() {
        return Err(corrupt("its embedding is not usable".into()));
    }
    Ok((item, emb))
}

fn read_item(p: &Path) -> Result<Item, InboxError> {
    read_record(p).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(thumb: &'a [u8], emb: &'a [f32], reason: Reason) -> Entry<'a> {
        Entry {
            thumb_jpeg: thumb,
            embedding: emb,
            reason,
            guess: Some("cup".into()),
            confidence: 0.4,
            time_ms: 5,
        }
    }

    #[test]
    fn items_round_trip_the_ring_is_bounded_and_ids_are_not_reused() {
        let d = tempfile::tempdir().unwrap();
        let emb = [0.5f32, 0.25, 1.0];
        let inbox = Inbox::open(d.path(), "bb", 3).unwrap();
        for i in 0..5u8 {
            inbox.add(&entry(&[i; 10], &emb, Reason::Unknown)).unwrap();
        }
        let ids: Vec<u64> = inbox.items().iter().map(|i| i.id).collect();
        assert_eq!(ids, [3, 4, 5], "the two oldest went");
        assert_eq!(
            std::fs::read_dir(d.path().join("inbox")).unwrap().count(),
            6
        );
        let (item, e, t) = inbox.get(4).unwrap();
        assert_eq!(
            (item.reason, item.guess.as_deref(), e.as_slice(), t),
            (Reason::Unknown, Some("cup"), &emb[..], vec![3u8; 10])
        );
        inbox.remove(4).unwrap();
        assert!(matches!(inbox.remove(4), Err(InboxError::Missing(4))));
        drop(inbox);
        // Reopened: the same items, and the next id continues.
        let again = Inbox::open(d.path(), "bb", 3).unwrap();
        assert_eq!(
            again.items().iter().map(|i| i.id).collect::<Vec<_>>(),
            [3, 5]
        );
        assert_eq!(again.add(&entry(b"x", &emb, Reason::Flip)).unwrap(), 6);
        assert_eq!(again.clear(), 3);
        assert!(again.is_empty());
        assert!(matches!(
            again.add(&entry(&vec![0; MAX_THUMB_BYTES + 1], &emb, Reason::Flip)),
            Err(InboxError::TooLarge(_))
        ));
    }

    #[test]
    fn damaged_foreign_and_other_backbone_items_are_removed_at_open() {
        let d = tempfile::tempdir().unwrap();
        let emb = [0.5f32, 0.25];
        {
            let a = Inbox::open(d.path(), "old", 10).unwrap();
            a.add(&entry(b"a", &emb, Reason::Unknown)).unwrap();
        }
        let b = Inbox::open(d.path(), "new", 10).unwrap();
        assert!(
            b.is_empty(),
            "another backbone's frame cannot become this one's sample"
        );
        b.add(&entry(b"b", &emb, Reason::LowMargin)).unwrap();
        b.add(&entry(b"c", &emb, Reason::LowMargin)).unwrap();
        drop(b);
        let dir = d.path().join("inbox");
        // Flip a byte of one record, tear a thumbnail of the other, drop a stray file.
        let rec = dir.join("00000002.rec");
        let mut bytes = std::fs::read(&rec).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&rec, bytes).unwrap();
        std::fs::write(dir.join("00000003.jpg"), b"torn").unwrap();
        std::fs::write(dir.join("00000099.jpg"), b"orphan").unwrap();
        let c = Inbox::open(d.path(), "new", 10).unwrap();
        assert_eq!(c.items().len(), 1, "the corrupt record went");
        assert!(matches!(c.thumbnail(3), Err(InboxError::Corrupt { .. })));
        assert!(!dir.join("00000002.rec").exists() && !dir.join("00000099.jpg").exists());
        // Ids stay above every name ever seen.
        assert_eq!(c.add(&entry(b"d", &emb, Reason::Flip)).unwrap(), 100);
    }
}
