//! `teachcam dataset export/import`: move what a device was taught between boards, and
//! out to the image-folder layout `teachcam train` accepts.
//!
//! The tarball holds `teachcam-dataset/manifest.json` (format, classes, and per sample its
//! label, capture time and the SHA-256 of its two files) and, per sample, the store's own
//! files: `samples/NNNNNNNN.jpg` (thumbnail) and `samples/NNNNNNNN.rec` (label and embedding,
//! with their own checksum). Import verifies every file before adding anything (all or
//! nothing), re-embeds thumbnails whose embedding came from another backbone, and skips
//! samples the store already has (same label and thumbnail), so importing twice adds
//! nothing. [`reembed_stale`] converts stored samples after a backbone change.
//! Must not: train, or read the clock (callers pass the time).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backbone::Embedder;
use crate::frame::check_class_name;
use crate::store::{Store, StoreError, decode_record};

/// Why an export or import failed; nothing was imported when an import fails.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder could not be read or written.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "create", ...).
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The input is not a tarball this program made, or is damaged.
    #[error("{origin}: {why}; nothing was imported")]
    Bad {
        /// The tarball (and entry).
        origin: String,
        /// What is wrong.
        why: String,
    },
    /// A class name cannot be a folder name (or is reserved).
    #[error("{origin}: class {label:?} {why}")]
    ClassName {
        /// Where it came from.
        origin: String,
        /// The name.
        label: String,
        /// Why it is refused.
        why: String,
    },
    /// An image-folder export into a folder that has files already.
    #[error("{0} is not empty; export into a new or empty folder")]
    NotEmpty(PathBuf),
    /// A sample could not be embedded (its image does not decode, or the model failed).
    #[error("cannot embed {origin}: {why}")]
    Embed {
        /// The image.
        origin: String,
        /// Why.
        why: String,
    },
    /// An image folder's layout is wrong.
    #[error(transparent)]
    Folder(#[from] crate::imagefolder::FolderError),
    /// The state directory refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DatasetError + 'a {
    move |source| DatasetError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn check_label(origin: &str, label: &str) -> Result<(), DatasetError> {
    check_class_name(label).map_err(|why| DatasetError::ClassName {
        origin: origin.to_string(),
        label: label.to_string(),
        why,
    })
}

const FORMAT: &str = "teachcam-dataset 1";
const ROOT: &str = "teachcam-dataset";
/// Largest file accepted inside a tarball (thumbnails and records are a few kB).
const MAX_ENTRY: u64 = 16 << 20;

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    classes: Vec<String>,
    samples: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    label: String,
    time_ms: u64,
    jpg_sha256: String,
    rec_sha256: String,
}

/// Classes in order of first capture.
fn classes_of(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in store.samples() {
        if !v.contains(&s.label) {
            v.push(s.label.clone());
        }
    }
    v
}

fn add_file(
    tar: &mut tar::Builder<Vec<u8>>,
    out: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), DatasetError> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, format!("{ROOT}/{name}"), bytes)
        .map_err(io_err("write", out))
}

/// Write every sample of `store` to the tarball `out` (atomically); returns the count.
pub fn export_tar(store: &Store, out: &Path) -> Result<usize, DatasetError> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut entries = Vec::new();
    for s in store.samples() {
        let name = format!("samples/{:08}", s.id);
        let jpg = store.thumbnail(s.id)?;
        let rec_path = store.record_path(s.id);
        let rec = std::fs::read(&rec_path).map_err(io_err("read", &rec_path))?;
        add_file(&mut tar, out, &format!("{name}.jpg"), &jpg)?;
        add_file(&mut tar, out, &format!("{name}.rec"), &rec)?;
        entries.push(Entry {
            name,
            label: s.label.clone(),
            time_ms: s.time_ms,
            jpg_sha256: crate::fsutil::sha256_hex(&jpg),
            rec_sha256: crate::fsutil::sha256_hex(&rec),
        });
    }
    let n = entries.len();
    let manifest = Manifest {
        format: FORMAT.into(),
        classes: classes_of(store),
        samples: entries,
    };
    // Plain strings and numbers: serialisation cannot fail.
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    add_file(&mut tar, out, "manifest.json", &manifest)?;
    let bytes = tar.into_inner().map_err(io_err("write", out))?;
    crate::fsutil::atomic_write(out, &bytes).map_err(io_err("write", out))?;
    Ok(n)
}

/// Write every sample's thumbnail to `out/<class>/<id>.jpg` (the layout `teachcam train`
/// reads); returns the count. Refuses to write into a folder that has files already.
pub fn export_folder(store: &Store, out: &Path) -> Result<usize, DatasetError> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(io_err("read", out))?
            .next()
            .is_some()
    {
        return Err(DatasetError::NotEmpty(out.to_path_buf()));
    }
    std::fs::create_dir_all(out).map_err(io_err("create", out))?;
    for s in store.samples() {
        check_label(&format!("sample {}", s.id), &s.label)?;
        let jpg = store.thumbnail(s.id)?;
        let dir = out.join(&s.label);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let p = dir.join(format!("{:08}.jpg", s.id));
        crate::fsutil::atomic_write(&p, &jpg).map_err(io_err("write", &p))?;
    }
    Ok(store.samples().len())
}

/// One sample ready to add.
struct Incoming {
    label: String,
    time_ms: u64,
    thumb: Vec<u8>,
    embedding: Option<Vec<f32>>,
    origin: String,
}

/// What an import did.
#[derive(Debug, Default, PartialEq)]
pub struct ImportReport {
    /// Samples added.
    pub added: usize,
    /// Samples the store already had.
    pub skipped: usize,
    /// Samples whose thumbnails were embedded here (new backbone, or an image folder).
    pub embedded: usize,
}

fn read_tar(input: &Path, digest: &str) -> Result<Vec<Incoming>, DatasetError> {
    let file = std::fs::File::open(input).map_err(io_err("open", input))?;
    let bad = |origin: String, why: String| DatasetError::Bad { origin, why };
    let whole = input.display().to_string();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(file);
    let entries = ar
        .entries()
        .map_err(|e| bad(whole.clone(), format!("not a tarball ({e})")))?;
    for entry in entries {
        let mut e = entry.map_err(|e| bad(whole.clone(), format!("truncated or corrupt ({e})")))?;
        let name = e
            .path()
            .map_err(|e| bad(whole.clone(), format!("bad entry name ({e})")))?
            .to_string_lossy()
            .into_owned();
        let origin = format!("{whole}:{name}");
        if e.size() > MAX_ENTRY {
            return Err(bad(origin, format!("too large ({} bytes)", e.size())));
        }
        let mut bytes = Vec::with_capacity(e.size() as usize);
        e.read_to_end(&mut bytes)
            .map_err(|e| bad(origin, format!("cannot be read ({e})")))?;
        if let Some(rel) = name.strip_prefix(&format!("{ROOT}/")) {
            files.insert(rel.to_string(), bytes);
        }
    }
    let manifest = files.get("manifest.json").ok_or_else(|| {
        bad(
            whole.clone(),
            format!("no {ROOT}/manifest.json; was it made by `teachcam dataset export`?"),
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| bad(whole.clone(), format!("manifest.json is not valid ({e})")))?;
    if manifest.format != FORMAT {
        return Err(bad(
            whole,
            format!(
                "format {:?}, this teachcam reads {FORMAT:?}",
                manifest.format
            ),
        ));
    }
    let mut out = Vec::new();
    for s in &manifest.samples {
        let origin = format!("{whole}:{}", s.name);
        let get = |ext: &str, want: &str| -> Result<&Vec<u8>, DatasetError> {
            let f = files
                .get(&format!("{}.{ext}", s.name))
                .ok_or_else(|| bad(format!("{origin}.{ext}"), "is missing".into()))?;
            if crate::fsutil::sha256_hex(f) != want {
                return Err(bad(
                    format!("{origin}.{ext}"),
                    "is corrupt (checksum mismatch)".into(),
                ));
            }
            Ok(f)
        };
        let jpg = get("jpg", &s.jpg_sha256)?;
        let rec_bytes = get("rec", &s.rec_sha256)?;
        let rec = decode_record(Path::new(&format!("{origin}.rec")), rec_bytes)
            .map_err(|e| bad(format!("{origin}.rec"), e.to_string()))?;
        check_label(&origin, &rec.label)?;
        out.push(Incoming {
            label: rec.label,
            time_ms: rec.time_ms,
            thumb: jpg.clone(),
            embedding: (rec.backbone == digest).then_some(rec.embedding),
            origin,
        });
    }
    Ok(out)
}

fn read_folder(input: &Path) -> Result<Vec<Incoming>, DatasetError> {
    let folder = crate::imagefolder::scan(input)?;
    let mut out = Vec::new();
    for item in &folder.items {
        let label = folder.classes[item.label].clone();
        check_label(&input.display().to_string(), &label)?;
        let origin = item.path.display().to_string();
        let embed_err = |why: String| DatasetError::Embed {
            origin: origin.clone(),
            why,
        };
        let frame =
            crate::imagefolder::load_rgb(&item.path).map_err(|e| embed_err(e.to_string()))?;
        let thumb = crate::frame::thumbnail_jpeg(&frame).map_err(|e| embed_err(e.to_string()))?;
        out.push(Incoming {
            label,
            time_ms: 0,
            thumb,
            embedding: None,
            origin: item.path.display().to_string(),
        });
    }
    Ok(out)
}

/// Add the samples of a tarball or image folder to `store`, embedding with `emb` where
/// needed; samples without a capture time (image folders) get `now_unix_ms`.
pub fn import(
    store: &mut Store,
    emb: &mut Embedder,
    input: &Path,
    now_unix_ms: u64,
) -> Result<ImportReport, DatasetError> {
    let digest = emb.backbone().id().digest.clone();
    store.set_backbone(&digest);
    let incoming = if input.is_dir() {
        read_folder(input)?
    } else {
        read_tar(input, &digest)?
    };
    // Identical thumbnail bytes with the same label are the same sample.
    let mut have: HashSet<(String, String)> = store
        .samples()
        .iter()
        .map(|s| (s.label.clone(), s.thumb_sha256.clone()))
        .collect();
    let mut rep = ImportReport::default();
    for s in incoming {
        let key = (s.label.clone(), crate::fsutil::sha256_hex(&s.thumb));
        if !have.insert(key) {
            rep.skipped += 1;
            continue;
        }
        let e = match s.embedding {
            Some(e) => e,
            None => {
                rep.embedded += 1;
                embed_jpeg(emb, &s.thumb).map_err(|why| DatasetError::Embed {
                    origin: s.origin.clone(),
                    why,
                })?
            }
        };
        let time_ms = if s.time_ms == 0 {
            now_unix_ms
        } else {
            s.time_ms
        };
        store.add(&s.label, &e, &s.thumb, time_ms)?;
        rep.added += 1;
    }
    Ok(rep)
}

/// Embed a JPEG (a stored thumbnail); the error says why it could not be.
pub fn embed_jpeg(emb: &mut Embedder, jpeg: &[u8]) -> Result<Vec<f32>, String> {
    let f = crate::frame::decode_jpeg(jpeg, "thumbnail").map_err(|e| e.to_string())?;
    emb.embed(&f.rgb, f.width, f.height)
        .map_err(|e| e.to_string())
}

/// What re-embedding after a backbone change did.
#[derive(Debug, Default, PartialEq)]
pub struct ReembedReport {
    /// Samples whose embeddings were made by another backbone.
    pub stale: usize,
    /// Of those, re-embedded from their thumbnails.
    pub done: usize,
}

/// Re-embed, from their thumbnails, the samples that another backbone embedded (the
/// precision or input size was changed), so what was taught is kept across a model change.
/// A sample whose thumbnail is damaged is kept as it was (and reported).
pub fn reembed_stale(store: &mut Store, emb: &mut Embedder) -> Result<ReembedReport, StoreError> {
    let digest = emb.backbone().id().digest.clone();
    store.set_backbone(&digest);
    let stale: Vec<u64> = store
        .samples()
        .iter()
        .filter(|s| !s.backbone.is_empty() && s.backbone != digest)
        .map(|s| s.id)
        .collect();
    let mut rep = ReembedReport {
        stale: stale.len(),
        done: 0,
    };
    if stale.is_empty() {
        return Ok(rep);
    }
    log::warn!(
        "{} samples were embedded by another backbone; re-embedding them with {}",
        stale.len(),
        emb.backbone().path().display()
    );
    for id in stale {
        let embedded = store
            .thumbnail(id)
            .map_err(|e| e.to_string())
            .and_then(|j| embed_jpeg(emb, &j));
        match embedded {
            Ok(e) => {
                store.replace_embedding(id, &e)?;
                rep.done += 1;
            }
            Err(e) => log::error!("sample {id} kept as it was: {e}"),
        }
    }
    Ok(rep)
}
