//! The fuzz targets, shared by `cargo fuzz` (`fuzz/fuzz_targets/*.rs`, nightly, libFuzzer)
//! and the stable harness that CI runs (`tests/fuzz_stable.rs`): one definition of what each
//! parser is fed and what must hold afterwards.
//!
//! Structure-aware where a checksum would stop a fuzzer at the door: besides the raw input,
//! each framed-file target also parses the input with its SHA-256 trailer recomputed, and the
//! tar target with every header checksum, every record trailer and every manifest checksum
//! recomputed, so mutations reach the metadata, payload and manifest logic behind them.
//! Must hold for every input: no panic, and (checked by the stable harness's counting
//! allocator) no allocation out of proportion to the input.

#![allow(dead_code)]

use std::io::Cursor;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Every target, by name (the corpus folder under `fuzz/corpus/` has the same name).
pub const TARGETS: &[&str] = &["framed", "head", "tce", "record", "config", "tar", "image"];

/// The backbone digest and dimension the tar corpus was made with, so its embeddings are
/// checked rather than dropped.
pub const BACKBONE: &str = "fuzz-backbone";
/// See [`BACKBONE`].
pub const DIM: usize = 8;

/// Pixel limit for the image target (small, so a mutated header reaching it is cheap).
pub const IMAGE_PIXELS: u64 = 1 << 20;

/// Run `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "framed" => framed(data),
        "head" => head(data),
        "tce" => tce(data),
        "record" => record(data),
        "config" => config(data),
        "tar" => tar(data),
        "image" => image(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// `bytes` with its last 32 bytes replaced by the SHA-256 of the rest (a framed trailer).
pub fn fix_trailer(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() < 32 {
        return bytes.to_vec();
    }
    let body = &bytes[..bytes.len() - 32];
    let mut out = body.to_vec();
    out.extend_from_slice(&Sha256::digest(body));
    out
}

fn both(data: &[u8], mut f: impl FnMut(&[u8])) {
    f(data);
    f(&fix_trailer(data));
}

fn framed(data: &[u8]) {
    both(data, |b| {
        let r = teachcam::framed::decode(Path::new("fuzz"), b, "fuzz", 1, |m| {
            teachcam::framed::meta_usize(m, "n").ok_or_else(|| "no n".to_string())
        });
        if let Ok((meta, payload)) = r {
            assert_eq!(
                Some(payload.len()),
                teachcam::framed::meta_usize(&meta, "n")
            );
        }
    });
}

fn head(data: &[u8]) {
    both(data, |b| {
        if let Ok(h) = teachcam::head::Head::decode(Path::new("fuzz.head"), b) {
            assert!(h.num_classes() > 0 && h.dim > 0);
            let p = h.predict(&vec![1.0; h.dim]);
            assert_eq!(p.probs.len(), h.num_classes());
            let _ = p.label(&h);
            let _ = p.top_k(3);
            let again =
                teachcam::head::Head::decode(Path::new("x"), &h.encode()).expect("round trip");
            assert_eq!(again.dim, h.dim);
        }
    });
}

fn tce(data: &[u8]) {
    both(data, |b| {
        if let Ok(set) = teachcam::embcache::EmbeddingSet::decode(Path::new("fuzz.tce"), b) {
            assert_eq!(set.data.len(), set.items.len() * set.dim);
            for i in 0..set.items.len() {
                assert_eq!(set.row(i).len(), set.dim);
            }
            let _ = set.select_split("train");
            let _ = set.labels();
        }
    });
}

fn record(data: &[u8]) {
    both(data, |b| {
        if let Ok(s) = teachcam::store::decode_record(Path::new("fuzz.rec"), b) {
            let _ = teachcam::embedding::check(&s.embedding, None);
        }
    });
}

fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let p = Path::new("fuzz.toml");
    if let Ok(f) = teachcam::config::ConfigFile::parse(&text, p) {
        let _ = teachcam::config::RunConfig::resolve(
            Some((p, f)),
            teachcam::config::Overrides::default(),
        );
    }
}

/// Parse an octal tar field.
fn octal(f: &[u8]) -> Option<u64> {
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// Recompute every tar header checksum along the chain of headers.
fn fix_tar_headers(b: &mut [u8]) {
    let mut pos = 0usize;
    while pos + 512 <= b.len() {
        let h = &mut b[pos..pos + 512];
        if h.iter().all(|&x| x == 0) {
            break;
        }
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(x)
                }
            })
            .sum();
        // Rewritten only when wrong, so a valid header stays byte for byte.
        if octal(&h[148..156]) != Some(sum) {
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
        let Some(size) = octal(&h[124..136]) else {
            break;
        };
        let Some(next) = usize::try_from(size.div_ceil(512) * 512)
            .ok()
            .and_then(|s| (pos + 512).checked_add(s))
        else {
            break;
        };
        pos = next;
    }
}

/// The tarball with header checksums, record trailers and manifest checksums recomputed.
pub fn fix_tar(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    fix_tar_headers(&mut b);
    let limits = teachcam::dataset::TAR_LIMITS;
    let Ok(idx) = teachcam::tarball::index(&mut Cursor::new(&b), b.len() as u64, &limits) else {
        return b;
    };
    let range = |e: &teachcam::tarball::Entry| e.offset as usize..(e.offset + e.size) as usize;
    for e in idx.entries.iter().filter(|e| e.name.ends_with(".rec")) {
        let r = range(e);
        let fixed = fix_trailer(&b[r.clone()]);
        b[r].copy_from_slice(&fixed);
    }
    let Some(m) = idx.get("teachcam-dataset/manifest.json") else {
        return b;
    };
    let mr = range(m);
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&b[mr.clone()]) else {
        return b;
    };
    let mut text = b[mr.clone()].to_vec();
    for s in manifest["samples"].as_array().into_iter().flatten() {
        let Some(name) = s["name"].as_str() else {
            continue;
        };
        for ext in ["jpg", "rec"] {
            let (Some(old), Some(e)) = (
                s[format!("{ext}_sha256")].as_str(),
                idx.get(&format!("teachcam-dataset/{name}.{ext}")),
            ) else {
                continue;
            };
            let new = teachcam::fsutil::sha256_hex(&b[range(e)]);
            if old.len() == new.len()
                && let Some(at) = text.windows(old.len()).position(|w| w == old.as_bytes())
            {
                text[at..at + new.len()].copy_from_slice(new.as_bytes());
            }
        }
    }
    b[mr].copy_from_slice(&text);
    b
}

fn tar(data: &[u8]) {
    for b in [data.to_vec(), fix_tar(data)] {
        let _ = teachcam::dataset::read_tar(
            &mut Cursor::new(&b),
            b.len() as u64,
            "fuzz.tar",
            BACKBONE,
            DIM,
            |s| {
                teachcam::imagefolder::check_label_text(&s.label).expect("label checked");
                if let Some(e) = &s.embedding {
                    teachcam::embedding::check(e, Some(DIM)).expect("embedding checked");
                }
                teachcam::decode::jpeg_end(&s.thumb).expect("thumbnail checked");
                Ok(())
            },
        );
    }
}

fn image(data: &[u8]) {
    teachcam::decode::set_max_pixels(IMAGE_PIXELS);
    if let Ok(img) = teachcam::decode::decode(data, None) {
        assert!(u64::from(img.width()) * u64::from(img.height()) <= IMAGE_PIXELS);
    }
}
