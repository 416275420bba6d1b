//! `teachcam dataset export/import`: move what a device was taught between boards, and
//! out to the image-folder layout `teachcam train` accepts.
//!
//! The tarball holds `teachcam-dataset/manifest.json` (format, classes, and per sample its
//! label, capture time and the SHA-256 of its two files) and, per sample, the store's own
//! files: `samples/NNNNNNNN.jpg` (thumbnail) and `samples/NNNNNNNN.rec` (label and embedding,
//! with their own checksum). Import verifies every file before adding anything (all or
//! nothing), re-embeds thumbnails whose embedding came from another backbone, and skips
//! samples the store already has (same label and thumbnail), so importing twice adds
//! nothing. Must not: train.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::backbone::Embedder;
use crate::store::{Store, decode_record};

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

fn add_file(tar: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, format!("{ROOT}/{name}"), bytes)
        .with_context(|| format!("cannot add {name} to the tarball"))
}

/// Write every sample of `store` to the tarball `out` (atomically); returns the count.
pub fn export_tar(store: &Store, out: &Path) -> Result<usize> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut entries = Vec::new();
    for s in store.samples() {
        let name = format!("samples/{:08}", s.id);
        let jpg = store
            .thumbnail(s.id)
            .map_err(|e| anyhow::anyhow!("sample {}: {e}", s.id))?;
        let rec_path = store.record_path(s.id);
        let rec = std::fs::read(&rec_path)
            .with_context(|| format!("cannot read {}", rec_path.display()))?;
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
    let n = entries.len();
    let manifest = Manifest {
        format: FORMAT.into(),
        classes: classes_of(store),
        samples: entries,
    };
    add_file(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    let bytes = tar.into_inner().context("cannot finish the tarball")?;
    crate::fsutil::atomic_write(out, &bytes)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(n)
}

/// Write every sample's thumbnail to `out/<class>/<id>.jpg` (the layout `teachcam train`
/// reads); returns the count. Refuses to write into a folder that has files already.
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
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for s in store.samples() {
        crate::config::check_class_name(&s.label)
            .map_err(|why| anyhow::anyhow!("class {:?} {why}", s.label))?;
        let jpg = store
            .thumbnail(s.id)
            .map_err(|e| anyhow::anyhow!("sample {}: {e}", s.id))?;
        let dir = out.join(&s.label);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let p = dir.join(format!("{:08}.jpg", s.id));
        crate::fsutil::atomic_write(&p, &jpg)
            .with_context(|| format!("cannot write {}", p.display()))?;
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

fn read_tar(input: &Path, sha: &str) -> Result<Vec<Incoming>> {
    let file =
        std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(file);
    for entry in ar
        .entries()
        .with_context(|| format!("{} is not a tarball", input.display()))?
    {
        let mut e =
            entry.with_context(|| format!("{} is truncated or corrupt", input.display()))?;
        let name = e.path()?.to_string_lossy().into_owned();
        if e.size() > MAX_ENTRY {
            bail!(
                "{}: {name} is too large ({} bytes)",
                input.display(),
                e.size()
            );
        }
        let mut bytes = Vec::with_capacity(e.size() as usize);
        e.read_to_end(&mut bytes)
            .with_context(|| format!("{}: cannot read {name}", input.display()))?;
        if let Some(rel) = name.strip_prefix(&format!("{ROOT}/")) {
            files.insert(rel.to_string(), bytes);
        }
    }
    let manifest: Manifest =
        serde_json::from_slice(files.get("manifest.json").with_context(|| {
            format!(
                "{} has no {ROOT}/manifest.json; was it made by `teachcam dataset export`?",
                input.display()
            )
        })?)
        .with_context(|| format!("{}: manifest.json is not valid", input.display()))?;
    if manifest.format != FORMAT {
        bail!(
            "{}: format {:?}, this teachcam reads {FORMAT:?}",
            input.display(),
            manifest.format
        );
    }
    let mut out = Vec::new();
    for s in &manifest.samples {
        let origin = format!("{}:{}", input.display(), s.name);
        let get = |ext: &str, want: &str| -> Result<&Vec<u8>> {
            let f = files
                .get(&format!("{}.{ext}", s.name))
                .with_context(|| format!("{origin}.{ext} is missing"))?;
            if crate::fsutil::sha256_hex(f) != want {
                bail!("{origin}.{ext} is corrupt (checksum mismatch); nothing was imported");
            }
            Ok(f)
        };
        let jpg = get("jpg", &s.jpg_sha256)?;
        let rec_bytes = get("rec", &s.rec_sha256)?;
        let rec = decode_record(Path::new(&format!("{origin}.rec")), rec_bytes)
            .map_err(|e| anyhow::anyhow!("{e}; nothing was imported"))?;
        crate::config::check_class_name(&rec.label)
            .map_err(|why| anyhow::anyhow!("{origin}: class {:?} {why}", rec.label))?;
        out.push(Incoming {
            label: rec.label,
            time_ms: rec.time_ms,
            thumb: jpg.clone(),
            embedding: (rec.backbone == sha).then_some(rec.embedding),
            origin,
        });
    }
    Ok(out)
}

fn read_folder(input: &Path) -> Result<Vec<Incoming>> {
    let folder = crate::imagefolder::scan(input)?;
    let mut out = Vec::new();
    for item in &folder.items {
        let label = folder.classes[item.label].clone();
        crate::config::check_class_name(&label)
            .map_err(|why| anyhow::anyhow!("{}: class {label:?} {why}", input.display()))?;
        let rgb = crate::imagefolder::load_rgb(&item.path)
            .with_context(|| format!("cannot read image {}", item.path.display()))?;
        let img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data)
            .context("bad image buffer")?;
        let thumb = crate::camera::thumbnail_jpeg(&img)
            .with_context(|| format!("cannot encode {}", item.path.display()))?;
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
/// needed.
pub fn import(store: &mut Store, emb: &mut Embedder, input: &Path) -> Result<ImportReport> {
    let sha = emb.backbone().sha256().to_string();
    store.set_backbone(&sha);
    let incoming = if input.is_dir() {
        read_folder(input)?
    } else {
        read_tar(input, &sha)?
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
                embed_jpeg(emb, &s.thumb).with_context(|| format!("cannot embed {}", s.origin))?
            }
        };
        let time_ms = if s.time_ms == 0 {
            crate::daemon::now_unix_ms()
        } else {
            s.time_ms
        };
        store.add(&s.label, &e, &s.thumb, time_ms)?;
        rep.added += 1;
    }
    Ok(rep)
}

/// Embed a JPEG.
pub fn embed_jpeg(emb: &mut Embedder, jpeg: &[u8]) -> Result<Vec<f32>> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)?.into_rgb8();
    let (w, h) = img.dimensions();
    Ok(emb.embed(img.as_raw(), w as usize, h as usize)?)
}
