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
//!
//! Export skips (and names) a sample whose thumbnail fails its checksum instead of failing
//! the whole export; a folder export is built beside its destination and renamed into place,
//! so a failure never leaves a partial folder. Must not: train.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::backbone::Embedder;
use crate::store::{Batch, Sample, Store, decode_record};
use crate::tarball::{self, Kind, Limits};

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

fn add_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, format!("{ROOT}/{name}"), bytes)
        .with_context(|| format!("cannot add {name} to the tarball"))
}

/// The thumbnail and record bytes of every sample whose thumbnail passes its checksum;
/// the others are logged and counted.
fn exportable<'a>(
    store: &'a Store,
) -> impl Iterator<Item = Result<(&'a Sample, Vec<u8>, Vec<u8>)>> + 'a {
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
                .with_context(|| format!("cannot read {}", rec_path.display()))
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

/// Write every sample of `store` to the tarball `out` (atomically, streamed); returns the
/// count. A sample whose thumbnail fails its checksum is named and left out.
pub fn export_tar(store: &Store, out: &Path) -> Result<usize> {
    let mut entries = Vec::new();
    let mut failed = None;
    crate::fsutil::atomic_write_with(out, |f| {
        let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
        let r = (|| -> Result<()> {
            for item in exportable(store) {
                let (s, jpg, rec) = item?;
                let name = format!("samples/{:08}", s.id);
                add_file(&mut tar, &format!("{name}.jpg"), &jpg)?;
                add_file(&mut tar, &format!("{name}.rec"), &rec)?;
                entries.push(Entry {
                    name,
                    label: s.label.clone(),
                    time_ms: s.time_ms,
                    jpg_sha256: crate::fsutil::sha256_hex(&jpg),
                    rec_sha256: crate::fsutil::sha256_hex(&rec),
                });
            }
            let manifest = Manifest {
                format: FORMAT.into(),
                classes: classes_in_order(entries.iter().map(|e| e.label.as_str())),
                samples: std::mem::take(&mut entries),
            };
            add_file(
                &mut tar,
                "manifest.json",
                &serde_json::to_vec_pretty(&manifest)?,
            )?;
            entries = manifest.samples;
            tar.into_inner()
                .context("cannot finish the tarball")?
                .flush()
                .context("cannot finish the tarball")?;
            Ok(())
        })();
        r.map_err(|e| {
            let io = std::io::Error::other(format!("{e:#}"));
            failed = Some(e);
            io
        })
    })
    .map_err(|e| failed.take().unwrap_or_else(|| e.into()))
    .with_context(|| format!("cannot write {}", out.display()))?;
    report_not_exported(store.samples().len(), entries.len());
    Ok(entries.len())
}

/// Write every sample's thumbnail to `out/<class>/<id>.jpg` (the layout `teachcam train`
/// reads); returns the count. Refuses to write into a folder that has files already. The
/// folder is assembled beside `out` and renamed into place when complete.
pub fn export_folder(store: &Store, out: &Path) -> Result<usize> {
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty; export into a new or empty folder",
            out.display()
        );
    }
    let tmp = crate::fsutil::temp_path(out)?;
    let r = write_folder(store, &tmp);
    let n = match r {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.is_dir() {
        // Empty (checked above); replaced by the complete export.
        std::fs::remove_dir(out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    std::fs::rename(&tmp, out).with_context(|| {
        let _ = std::fs::remove_dir_all(&tmp);
        format!("cannot move the export into {}", out.display())
    })?;
    report_not_exported(store.samples().len(), n);
    Ok(n)
}

fn write_folder(store: &Store, dir: &Path) -> Result<usize> {
    std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut n = 0;
    for item in exportable(store) {
        let (s, jpg, _) = item?;
        if let Err(why) = crate::config::check_class_name(&s.label)
            .and_then(|()| crate::imagefolder::check_label_text(&s.label))
        {
            log::warn!("sample {} not exported: class {:?} {why}", s.id, s.label);
            continue;
        }
        let class_dir = dir.join(&s.label);
        std::fs::create_dir_all(&class_dir)
            .with_context(|| format!("cannot create {}", class_dir.display()))?;
        let p = class_dir.join(format!("{:08}.jpg", s.id));
        std::fs::write(&p, &jpg).with_context(|| format!("cannot write {}", p.display()))?;
        n += 1;
    }
    // Durable before it appears under its name.
    crate::fsutil::sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
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

fn check_label(origin: &str, label: &str) -> Result<()> {
    crate::config::check_class_name(label)
        .and_then(|()| crate::imagefolder::check_label_text(label))
        .map_err(|why| anyhow::anyhow!("{origin}: class {label:?} {why}; nothing was imported"))
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
/// messages), calling `sink` with each in manifest order. `backbone_sha` and `dim` are this
/// machine's backbone: embeddings from it are checked and kept, others are dropped (the
/// thumbnail is embedded again). Nothing is written; a refusal says why and names the
/// entry. This is the whole parser an attacker's tarball meets (fuzzed).
pub fn read_tar<R: Read + Seek>(
    r: &mut R,
    len: u64,
    origin: &str,
    backbone_sha: &str,
    dim: usize,
    mut sink: impl FnMut(Incoming) -> Result<()>,
) -> Result<()> {
    let idx = tarball::index(r, len, &TAR_LIMITS)
        .map_err(|e| anyhow::anyhow!("{origin}: {e}; nothing was imported"))?;
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
            bail!(
                "{origin}: unexpected entry {} ({} bytes); a tarball from `teachcam dataset export` holds only {ROOT}/manifest.json and {ROOT}/samples/NNNNNNNN.jpg/.rec; nothing was imported",
                e.name,
                e.size
            );
        }
        if e.kind == Kind::File {
            files.insert(e.name.clone());
        }
    }
    let entry = |name: &str| idx.get(&format!("{ROOT}/{name}"));
    let m = entry("manifest.json").with_context(|| {
        format!("{origin} has no {ROOT}/manifest.json; was it made by `teachcam dataset export`?")
    })?;
    let bytes = tarball::read_entry(r, m).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        // serde_json's message names a line and column, never the content.
        anyhow::anyhow!("{origin}: manifest.json is not valid ({e}); nothing was imported")
    })?;
    drop(bytes);
    if manifest.format != FORMAT {
        bail!(
            "{origin}: format {:?}, this teachcam reads {FORMAT:?}",
            clip(&manifest.format)
        );
    }
    if manifest.samples.len() > MAX_SAMPLES {
        bail!(
            "{origin}: {} samples, more than the {MAX_SAMPLES} one import takes",
            manifest.samples.len()
        );
    }
    // The manifest must describe exactly the files present, each once.
    let mut named = HashSet::new();
    for s in &manifest.samples {
        if !is_sample_name(&s.name) || !named.insert(s.name.as_str()) {
            bail!(
                "{origin}: manifest sample name {:?} is malformed or repeated; nothing was imported",
                clip(&s.name)
            );
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
            bail!("{origin}: {f} is not in the manifest; nothing was imported");
        }
    }
    let classes = classes_in_order(manifest.samples.iter().map(|s| s.label.as_str()));
    if classes != manifest.classes {
        bail!(
            "{origin}: the manifest's class list does not match its samples' labels; nothing was imported"
        );
    }
    for s in &manifest.samples {
        let here = format!("{origin}:{}", s.name);
        let get = |ext: &str, want: &str, r: &mut R| -> Result<Vec<u8>> {
            let e = entry(&format!("{}.{ext}", s.name))
                .with_context(|| format!("{here}.{ext} is missing; nothing was imported"))?;
            let bytes = tarball::read_entry(r, e).map_err(|e| anyhow::anyhow!("{here}: {e}"))?;
            if crate::fsutil::sha256_hex(&bytes) != want {
                bail!("{here}.{ext} is corrupt (checksum mismatch); nothing was imported");
            }
            Ok(bytes)
        };
        let jpg = get("jpg", &s.jpg_sha256, r)?;
        let rec_bytes = get("rec", &s.rec_sha256, r)?;
        let rec = decode_record(Path::new(&format!("{here}.rec")), &rec_bytes)
            .map_err(|e| anyhow::anyhow!("{e}; nothing was imported"))?;
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
            bail!("{here}: the manifest's {what} contradicts the record's; nothing was imported");
        }
        crate::decode::jpeg_end(&jpg)
            .map_err(|why| anyhow::anyhow!("{here}.jpg: {why}; nothing was imported"))?;
        let embedding = if rec.backbone == backbone_sha {
            crate::embedding::check(&rec.embedding, Some(dim))
                .map_err(|e| anyhow::anyhow!("{here}.rec: {e}; nothing was imported"))?;
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
fn read_folder(input: &Path, mut sink: impl FnMut(Incoming) -> Result<()>) -> Result<()> {
    for (_, folder) in crate::imagefolder::scan_all(input)? {
        if !folder.skipped.is_empty() {
            bail!(
                "{}: {} entries cannot be read (named above); fix or remove them, nothing was imported",
                folder.root.display(),
                folder.skipped.len()
            );
        }
        for item in &folder.items {
            let label = folder.classes[item.label].clone();
            check_label(&input.display().to_string(), &label)?;
            let rgb = crate::imagefolder::load_rgb(&item.path).with_context(|| {
                format!(
                    "cannot read image {}; nothing was imported",
                    item.path.display()
                )
            })?;
            let img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data)
                .context("bad image buffer")?;
            let thumb = crate::camera::thumbnail_jpeg(&img)
                .with_context(|| format!("cannot encode {}", item.path.display()))?;
            sink(Incoming {
                label,
                time_ms: 0,
                thumb,
                embedding: None,
                origin: item.path.display().to_string(),
            })?;
        }
    }
    Ok(())
}

/// Add the samples of a tarball or image folder to `store`, embedding with `emb` where
/// needed: all of them, or none (see the module docs).
pub fn import(store: &mut Store, emb: &mut Embedder, input: &Path) -> Result<ImportReport> {
    let sha = emb.backbone().sha256().to_string();
    let dim = emb.backbone().dim();
    store.set_backbone(&sha);
    // Identical thumbnail bytes with the same label are the same sample.
    let mut have: HashSet<(String, String)> = store
        .samples()
        .iter()
        .map(|s| (s.label.clone(), s.thumb_sha256.clone()))
        .collect();
    let mut rep = ImportReport::default();
    let mut batch: Batch = store.begin_batch()?;
    let now = crate::daemon::now_unix_ms();
    let mut stage = |s: Incoming| -> Result<()> {
        let key = (s.label.clone(), crate::fsutil::sha256_hex(&s.thumb));
        if !have.insert(key) {
            rep.skipped += 1;
            return Ok(());
        }
        let e = match s.embedding {
            Some(e) => e,
            None => {
                rep.embedded += 1;
                let e = embed_jpeg(emb, &s.thumb)
                    .with_context(|| format!("cannot embed {}; nothing was imported", s.origin))?;
                crate::embedding::check(&e, Some(dim))
                    .map_err(|e| anyhow::anyhow!("{}: {e}; nothing was imported", s.origin))?;
                e
            }
        };
        let time_ms = if s.time_ms == 0 { now } else { s.time_ms };
        batch
            .stage(&s.label, &e, &s.thumb, time_ms)
            .with_context(|| format!("cannot stage {}; nothing was imported", s.origin))?;
        Ok(())
    };
    if input.is_dir() {
        read_folder(input, &mut stage)?;
    } else {
        let mut f = std::fs::File::open(input)
            .with_context(|| format!("cannot open {}", input.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("cannot read {}", input.display()))?
            .len();
        let origin = input.display().to_string();
        read_tar(&mut f, len, &origin, &sha, dim, &mut stage)?;
    }
    rep.added = store.commit_batch(batch)?;
    Ok(rep)
}

/// Embed a JPEG (bounded and checked like every decode, see [`crate::decode`]).
pub fn embed_jpeg(emb: &mut Embedder, jpeg: &[u8]) -> Result<Vec<f32>> {
    let img = crate::decode::decode_jpeg(jpeg)?;
    let (w, h) = img.dimensions();
    Ok(emb.embed(img.as_raw(), w as usize, h as usize)?)
}
