//! `teachcam dataset export/import`: move what a device was taught between boards, and
//! out to the image-folder layout `teachcam train` accepts.
//!
//! The tarball holds `teachcam-dataset/manifest.json` (format, classes, and per sample its
//! label, capture time and the SHA-256 of its two files) and, per sample, the store's own
//! files: `samples/NNNNNNNN.jpg` (thumbnail) and `samples/NNNNNNNN.rec` (label and embedding,
//! with their own checksum).
//!
//! Import is all or nothing: the tarball's headers are read and bounded first
//! ([`crate::tarball`]: regular files and directories only, entry count and sizes capped
//! before any data is read), then every sample is read one at a time, verified (checksums,
//! manifest against record, embedding sanity, thumbnail structure), embedded if it came
//! from another backbone, and staged beside the store ([`crate::store::Batch`]); only when
//! all of them passed are they added, with one index write. Samples the store already has
//! (same label and thumbnail) are skipped, so importing twice adds nothing. Image folders
//! (`<class>/*.jpg`, or `train/` and `val/` as `synth` writes) import the same way.
//! [`reembed_stale`] converts stored samples after a backbone change.
//!
//! Export skips (and names) a sample whose thumbnail fails its checksum instead of failing
//! the whole export; a folder export is built beside its destination and renamed into place,
//! so a failure never leaves a partial folder.
//! Must not: train, or read the clock (callers pass the time).

use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backbone::Embedder;
use crate::frame::check_class_name;
use crate::store::{Batch, Capture, Sample, Store, StoreError, decode_record};
use crate::tarball::{self, Kind, Limits};

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
    /// The input is not a tarball this program made, or is damaged. Never quotes more
    /// than a few characters of the input.
    #[error("{origin}: {why}; nothing was imported")]
    Bad {
        /// The tarball (and entry).
        origin: String,
        /// What is wrong.
        why: String,
    },
    /// A class name cannot be a folder name (or is reserved).
    #[error("{origin}: class {label:?} {why}; nothing was imported")]
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
    #[error("cannot embed {origin}: {why}; nothing was imported")]
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

fn bad(origin: impl Into<String>, why: impl Into<String>) -> DatasetError {
    DatasetError::Bad {
        origin: origin.into(),
        why: why.into(),
    }
}

fn check_label(origin: &str, label: &str) -> Result<(), DatasetError> {
    check_class_name(label).map_err(|why| DatasetError::ClassName {
        origin: origin.to_string(),
        label: clip(label),
        why,
    })
}

const FORMAT: &str = "teachcam-dataset 1";
const ROOT: &str = "teachcam-dataset";
/// Most samples one tarball may hold.
pub const MAX_SAMPLES: usize = 100_000;
/// Largest thumbnail or record accepted inside a tarball (thumbnails are ~5–15 kB, records
/// a header plus 4 bytes per dimension).
pub const MAX_SAMPLE_FILE: u64 = 1 << 20;
/// Largest manifest (about 300 bytes per sample).
pub const MAX_MANIFEST: u64 = 64 << 20;

/// The bounds applied to a tarball's headers before any of its data is read.
pub const TAR_LIMITS: Limits = Limits {
    max_entries: 2 * MAX_SAMPLES + 8,
    max_entry: MAX_MANIFEST,
    max_total: 2 * MAX_SAMPLES as u64 * MAX_SAMPLE_FILE + MAX_MANIFEST,
};

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

/// Classes in order of first appearance.
fn classes_in_order<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for l in labels {
        if !v.iter().any(|c| c == l) {
            v.push(l.to_string());
        }
    }
    v
}

fn add_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, format!("{ROOT}/{name}"), bytes)
}

/// One exportable sample: the sample, its thumbnail and its record bytes.
type Exportable<'a> = (&'a Sample, Vec<u8>, Vec<u8>);

/// The thumbnail and record bytes of every sample whose thumbnail passes its checksum;
/// the others are logged and left out.
fn exportable<'a>(
    store: &'a Store,
) -> impl Iterator<Item = Result<Exportable<'a>, DatasetError>> + 'a {
    store.samples().iter().filter_map(move |s| {
        let jpg = match store.thumbnail(s.id) {
            Ok(j) => j,
            Err(e) => {
                log::warn!("sample {} not exported: {e}", s.id);
                return None;
            }
        };
        let rec_path = store.record_path(s.id);
        Some(
            crate::fsutil::read_bounded(&rec_path, crate::store::MAX_RECORD_FILE)
                .map_err(io_err("read", &rec_path))
                .map(|rec| (s, jpg, rec)),
        )
    })
}

fn report_not_exported(total: usize, written: usize) {
    if written < total {
        log::warn!(
            "{} of {total} samples were not exported (damaged thumbnails, named above)",
            total - written
        );
    }
}

/// A dataset tarball being written: samples, then the manifest.
struct TarOut<W: Write> {
    tar: tar::Builder<W>,
    entries: Vec<Entry>,
}

impl<W: Write> TarOut<W> {
    fn new(w: W) -> Self {
        TarOut {
            tar: tar::Builder::new(w),
            entries: Vec::new(),
        }
    }

    fn add(&mut self, s: &Sample, jpg: &[u8], rec: &[u8]) -> std::io::Result<()> {
        let name = format!("samples/{:08}", s.id);
        add_file(&mut self.tar, &format!("{name}.jpg"), jpg)?;
        add_file(&mut self.tar, &format!("{name}.rec"), rec)?;
        self.entries.push(Entry {
            name,
            label: s.label.clone(),
            time_ms: s.time_ms,
            jpg_sha256: crate::fsutil::sha256_hex(jpg),
            rec_sha256: crate::fsutil::sha256_hex(rec),
        });
        Ok(())
    }

    /// Write the manifest and the end of the archive; the writer and the sample count.
    fn finish(mut self) -> std::io::Result<(W, usize)> {
        let n = self.entries.len();
        let manifest = Manifest {
            format: FORMAT.into(),
            classes: classes_in_order(self.entries.iter().map(|e| e.label.as_str())),
            samples: self.entries,
        };
        // Plain strings and numbers: serialisation cannot fail.
        let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        add_file(&mut self.tar, "manifest.json", &bytes)?;
        Ok((self.tar.into_inner()?, n))
    }
}

/// Write every sample of `store` to the tarball `out` (atomically, streamed); returns the
/// count. A sample whose thumbnail fails its checksum is named and left out.
pub fn export_tar(store: &Store, out: &Path) -> Result<usize, DatasetError> {
    let mut count = 0;
    let mut failed: Option<DatasetError> = None;
    let written = crate::fsutil::atomic_write_with(out, |f| {
        let mut tar = TarOut::new(std::io::BufWriter::new(f));
        for item in exportable(store) {
            let (s, jpg, rec) = match item {
                Ok(x) => x,
                Err(e) => {
                    let io = std::io::Error::other(e.to_string());
                    failed = Some(e);
                    return Err(io);
                }
            };
            tar.add(s, &jpg, &rec)?;
        }
        let (mut w, n) = tar.finish()?;
        count = n;
        w.flush()
    });
    if let Err(e) = written {
        return Err(failed.take().unwrap_or_else(|| io_err("write", out)(e)));
    }
    report_not_exported(store.samples().len(), count);
    Ok(count)
}

/// Write the samples `ids` of the state directory `dir` as a dataset tarball to `w`, from a
/// thread that does not own the store (the web console's download) while the appliance keeps
/// running. Each record is read and verified and its thumbnail checked against it, so what
/// is written is self-consistent: a sample deleted or being rewritten meanwhile is left out
/// (counted), never exported half. Returns (written, left out).
pub fn stream_tar<W: Write>(dir: &Path, ids: &[u64], w: W) -> std::io::Result<(usize, usize)> {
    let mut tar = TarOut::new(w);
    let mut left_out = 0;
    for &id in ids {
        let p = dir.join("samples").join(format!("{id:08}.rec"));
        let read = crate::fsutil::read_bounded(&p, crate::store::MAX_RECORD_FILE)
            .map_err(|e| e.to_string())
            .and_then(|rec| {
                let s = decode_record(&p, &rec).map_err(|e| e.to_string())?;
                let jpg = crate::store::read_thumbnail(dir, id, &s.thumb_sha256)
                    .map_err(|e| e.to_string())?;
                Ok((s, jpg, rec))
            });
        match read {
            Ok((s, jpg, rec)) if s.id == id => tar.add(&s, &jpg, &rec)?,
            Ok(_) => left_out += 1,
            Err(e) => {
                log::warn!("sample {id} not in the download: {e}");
                left_out += 1;
            }
        }
    }
    let (mut w, n) = tar.finish()?;
    w.flush()?;
    Ok((n, left_out))
}

/// Write every sample's thumbnail to `out/<class>/<id>.jpg` (the layout `teachcam train`
/// reads); returns the count. Refuses to write into a folder that has files already. The
/// folder is assembled beside `out` and renamed into place when complete.
pub fn export_folder(store: &Store, out: &Path) -> Result<usize, DatasetError> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(io_err("read", out))?
            .next()
            .is_some()
    {
        return Err(DatasetError::NotEmpty(out.to_path_buf()));
    }
    let tmp = crate::fsutil::temp_path(out).map_err(io_err("create", out))?;
    let n = match write_folder(store, &tmp) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.is_dir() {
        // Empty (checked above); replaced by the complete export.
        std::fs::remove_dir(out).map_err(io_err("replace", out))?;
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io_err("move the export into", out)(e));
    }
    report_not_exported(store.samples().len(), n);
    Ok(n)
}

fn write_folder(store: &Store, dir: &Path) -> Result<usize, DatasetError> {
    std::fs::create_dir(dir).map_err(io_err("create", dir))?;
    let mut n = 0;
    for item in exportable(store) {
        let (s, jpg, _) = item?;
        if let Err(why) = check_class_name(&s.label) {
            log::warn!("sample {} not exported: class {:?} {why}", s.id, s.label);
            continue;
        }
        let class_dir = dir.join(&s.label);
        std::fs::create_dir_all(&class_dir).map_err(io_err("create", &class_dir))?;
        let p = class_dir.join(format!("{:08}.jpg", s.id));
        std::fs::write(&p, &jpg).map_err(io_err("write", &p))?;
        n += 1;
    }
    // Durable before it appears under its name.
    crate::fsutil::sync_dir(dir).map_err(io_err("sync", dir))?;
    Ok(n)
}

/// One sample read from an import source, checked, not yet embedded or staged.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// Class name (checked: a plain name without control characters).
    pub label: String,
    /// Capture time (0 = unknown: the import time is used).
    pub time_ms: u64,
    /// The thumbnail JPEG (structure checked).
    pub thumb: Vec<u8>,
    /// The embedding, when it came from this backbone (checked: finite, the backbone's
    /// dimension, plausible norm); `None` = embed the thumbnail here.
    pub embedding: Option<Vec<f32>>,
    /// Where it came from, for messages.
    pub origin: String,
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

/// At most 40 characters of a string from the input, for messages.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Is `name` a sample name as export writes it (`samples/` and eight digits)?
fn is_sample_name(name: &str) -> bool {
    name.strip_prefix("samples/")
        .is_some_and(|id| id.len() == 8 && id.bytes().all(|b| b.is_ascii_digit()))
}

/// Read and verify every sample of the tarball `r` (`len` bytes, named `origin` in
/// messages), calling `sink` with each in manifest order. `backbone_digest` and `dim` are
/// this machine's backbone: embeddings from it are checked and kept, others are dropped (the
/// thumbnail is embedded again). Nothing is written; a refusal says why and names the
/// entry. This is the whole parser an attacker's tarball meets (fuzzed).
pub fn read_tar<R: Read + Seek>(
    r: &mut R,
    len: u64,
    origin: &str,
    backbone_digest: &str,
    dim: usize,
    mut sink: impl FnMut(Incoming) -> Result<(), DatasetError>,
) -> Result<(), DatasetError> {
    let idx = tarball::index(r, len, &TAR_LIMITS).map_err(|e| bad(origin, e.to_string()))?;
    // Only what export writes: the root, samples/, the manifest and sample files.
    let mut files = HashSet::new();
    for e in &idx.entries {
        let rel = e.name.strip_prefix(&format!("{ROOT}/"));
        let ok = match (e.kind, rel) {
            (Kind::Dir, _) => e.name == ROOT || rel == Some("samples"),
            (Kind::File, Some("manifest.json")) => true,
            (Kind::File, Some(r)) => {
                let stem = r.strip_suffix(".jpg").or_else(|| r.strip_suffix(".rec"));
                stem.is_some_and(is_sample_name) && e.size <= MAX_SAMPLE_FILE
            }
            (Kind::File, None) => false,
        };
        if !ok {
            return Err(bad(
                origin,
                format!(
                    "unexpected entry {} ({} bytes); a tarball from `teachcam dataset export` holds only {ROOT}/manifest.json and {ROOT}/samples/NNNNNNNN.jpg/.rec",
                    e.name, e.size
                ),
            ));
        }
        if e.kind == Kind::File {
            files.insert(e.name.clone());
        }
    }
    let entry = |name: &str| idx.get(&format!("{ROOT}/{name}"));
    let m = entry("manifest.json").ok_or_else(|| {
        bad(
            origin,
            format!("no {ROOT}/manifest.json; was it made by `teachcam dataset export`?"),
        )
    })?;
    let bytes = tarball::read_entry(r, m).map_err(|e| bad(origin, e.to_string()))?;
    // serde_json's message names a line and column, never the content.
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| bad(origin, format!("manifest.json is not valid ({e})")))?;
    drop(bytes);
    if manifest.format != FORMAT {
        return Err(bad(
            origin,
            format!(
                "format {:?}, this teachcam reads {FORMAT:?}",
                clip(&manifest.format)
            ),
        ));
    }
    if manifest.samples.len() > MAX_SAMPLES {
        return Err(bad(
            origin,
            format!(
                "{} samples, more than the {MAX_SAMPLES} one import takes",
                manifest.samples.len()
            ),
        ));
    }
    // The manifest must describe exactly the files present, each once.
    let mut named = HashSet::new();
    for s in &manifest.samples {
        if !is_sample_name(&s.name) || !named.insert(s.name.as_str()) {
            return Err(bad(
                origin,
                format!(
                    "manifest sample name {:?} is malformed or repeated",
                    clip(&s.name)
                ),
            ));
        }
        check_label(&format!("{origin}:{}", s.name), &s.label)?;
    }
    for f in &files {
        let rel = &f[ROOT.len() + 1..];
        let stem = rel
            .strip_suffix(".jpg")
            .or_else(|| rel.strip_suffix(".rec"));
        if let Some(stem) = stem
            && !named.contains(stem)
        {
            return Err(bad(origin, format!("{f} is not in the manifest")));
        }
    }
    let classes = classes_in_order(manifest.samples.iter().map(|s| s.label.as_str()));
    if classes != manifest.classes {
        return Err(bad(
            origin,
            "the manifest's class list does not match its samples' labels",
        ));
    }
    for s in &manifest.samples {
        let here = format!("{origin}:{}", s.name);
        let get = |ext: &str, want: &str, r: &mut R| -> Result<Vec<u8>, DatasetError> {
            let e = entry(&format!("{}.{ext}", s.name))
                .ok_or_else(|| bad(format!("{here}.{ext}"), "is missing"))?;
            let bytes = tarball::read_entry(r, e).map_err(|e| bad(&here, e.to_string()))?;
            if crate::fsutil::sha256_hex(&bytes) != want {
                return Err(bad(
                    format!("{here}.{ext}"),
                    "is corrupt (checksum mismatch)",
                ));
            }
            Ok(bytes)
        };
        let jpg = get("jpg", &s.jpg_sha256, r)?;
        let rec_bytes = get("rec", &s.rec_sha256, r)?;
        let rec = decode_record(Path::new(&format!("{here}.rec")), &rec_bytes)
            .map_err(|e| bad(format!("{here}.rec"), e.to_string()))?;
        // The record carries its own copy of label, time and thumbnail checksum: the
        // manifest may not say something else.
        let contradiction = if rec.label != s.label {
            Some("label")
        } else if rec.time_ms != s.time_ms {
            Some("capture time")
        } else if rec.thumb_sha256 != s.jpg_sha256 {
            Some("thumbnail checksum")
        } else {
            None
        };
        if let Some(what) = contradiction {
            return Err(bad(
                &here,
                format!("the manifest's {what} contradicts the record's"),
            ));
        }
        crate::decode::jpeg_end(&jpg).map_err(|why| bad(format!("{here}.jpg"), why))?;
        let embedding = if rec.backbone == backbone_digest {
            crate::embedding::check(&rec.embedding, Some(dim))
                .map_err(|e| bad(format!("{here}.rec"), e.to_string()))?;
            Some(rec.embedding)
        } else {
            None
        };
        sink(Incoming {
            label: rec.label,
            time_ms: rec.time_ms,
            thumb: jpg,
            embedding,
            origin: here,
        })?;
    }
    Ok(())
}

/// Read every image of an image folder (either layout), calling `sink` with each as a
/// thumbnail to embed.
fn read_folder(
    input: &Path,
    mut sink: impl FnMut(Incoming) -> Result<(), DatasetError>,
) -> Result<(), DatasetError> {
    for (_, folder) in crate::imagefolder::scan_all(input)? {
        if !folder.skipped.is_empty() {
            return Err(bad(
                folder.root.display().to_string(),
                format!(
                    "{} entries cannot be read (named above); fix or remove them",
                    folder.skipped.len()
                ),
            ));
        }
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
            let thumb =
                crate::frame::thumbnail_jpeg(&frame).map_err(|e| embed_err(e.to_string()))?;
            sink(Incoming {
                label,
                time_ms: 0,
                thumb,
                embedding: None,
                origin,
            })?;
        }
    }
    Ok(())
}

/// Add the samples of a tarball or image folder to `store`, embedding with `emb` where
/// needed: all of them, or none (see the module docs). Samples without a capture time
/// (image folders) get `now_unix_ms`.
pub fn import(
    store: &mut Store,
    emb: &mut Embedder,
    input: &Path,
    now_unix_ms: u64,
) -> Result<ImportReport, DatasetError> {
    let digest = emb.backbone().id().digest.clone();
    let dim = emb.backbone().dim();
    store.set_backbone(&digest);
    // A stored record of this backbone with another length would refuse the whole batch.
    store.quarantine_mismatched(dim)?;
    let have = known(store.samples().iter().map(|s| (&s.label, &s.thumb_sha256)));
    let mut batch: Batch = store.begin_batch()?;
    let origin = input.display().to_string();
    let mut rep = stage(input, &origin, emb, have, &mut batch, now_unix_ms)?;
    rep.added = store.commit_batch(batch)?;
    Ok(rep)
}

/// The (label, thumbnail checksum) pairs of samples a store has: an incoming sample with the
/// same pair is the same sample (identical thumbnail bytes with the same label).
pub fn known<'a>(
    samples: impl Iterator<Item = (&'a String, &'a String)>,
) -> HashSet<(String, String)> {
    samples.map(|(l, t)| (l.clone(), t.clone())).collect()
}

fn key(s: &Incoming) -> (String, String) {
    (s.label.clone(), crate::fsutil::sha256_hex(&s.thumb))
}

/// Read and verify the tarball `input` (named `origin` in messages) without writing or
/// embedding anything (the first pass of an import beside the running loop): how many
/// samples it would add to a store that has `have`, and how many it would skip.
pub fn count_new(
    input: &Path,
    origin: &str,
    backbone_digest: &str,
    dim: usize,
    mut have: HashSet<(String, String)>,
) -> Result<(usize, usize), DatasetError> {
    let (mut new, mut skipped) = (0, 0);
    read_tar_file(input, origin, backbone_digest, dim, |s| {
        if have.insert(key(&s)) {
            new += 1;
        } else {
            skipped += 1;
        }
        Ok(())
    })?;
    Ok((new, skipped))
}

fn read_tar_file(
    input: &Path,
    origin: &str,
    digest: &str,
    dim: usize,
    sink: impl FnMut(Incoming) -> Result<(), DatasetError>,
) -> Result<(), DatasetError> {
    let mut f = std::fs::File::open(input).map_err(io_err("open", input))?;
    let len = f.metadata().map_err(io_err("read", input))?.len();
    read_tar(&mut f, len, origin, digest, dim, sink)
}

/// Verify, embed where needed and stage into `batch` every sample of the tarball or image
/// folder `input` (named `origin` in messages) that `have` lacks. Nothing is added to a store: the batch's owner
/// commits it. The report's `added` is what was staged.
pub fn stage(
    input: &Path,
    origin: &str,
    emb: &mut Embedder,
    mut have: HashSet<(String, String)>,
    batch: &mut Batch,
    now_unix_ms: u64,
) -> Result<ImportReport, DatasetError> {
    let digest = emb.backbone().id().digest.clone();
    let dim = emb.backbone().dim();
    let mut rep = ImportReport::default();
    let mut stage = |s: Incoming| -> Result<(), DatasetError> {
        if !have.insert(key(&s)) {
            rep.skipped += 1;
            return Ok(());
        }
        let e = match s.embedding {
            Some(e) => e,
            None => {
                rep.embedded += 1;
                let e = embed_jpeg(emb, &s.thumb).map_err(|why| DatasetError::Embed {
                    origin: s.origin.clone(),
                    why,
                })?;
                crate::embedding::check(&e, Some(dim)).map_err(|e| DatasetError::Embed {
                    origin: s.origin.clone(),
                    why: e.to_string(),
                })?;
                e
            }
        };
        let time_ms = if s.time_ms == 0 {
            now_unix_ms
        } else {
            s.time_ms
        };
        batch.stage(Capture {
            label: &s.label,
            embedding: &e,
            thumb_jpeg: &s.thumb,
            time_ms,
            // Imported samples are each their own press (a dataset keeps no presses).
            press: None,
        })?;
        rep.added += 1;
        Ok(())
    };
    if input.is_dir() {
        read_folder(input, &mut stage)?;
    } else {
        read_tar_file(input, origin, &digest, dim, &mut stage)?;
    }
    Ok(rep)
}

/// Embed a JPEG (a stored thumbnail; bounded and checked like every decode, see
/// [`crate::decode`]); the error says why it could not be.
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
/// Samples that claim this backbone but have another embedding length are quarantined.
/// A sample whose thumbnail is damaged is kept as it was (and reported).
pub fn reembed_stale(store: &mut Store, emb: &mut Embedder) -> Result<ReembedReport, StoreError> {
    let digest = emb.backbone().id().digest.clone();
    store.set_backbone(&digest);
    // Records claiming this backbone with another length cannot be used (or re-embedded:
    // they claim to be current); they are quarantined with a message.
    store.quarantine_mismatched(emb.backbone().dim())?;
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
