//! The fuzz targets on the stable toolchain, for CI: seeded mutations of the committed corpus
//! (`fuzz/corpus/<target>/`) fed to each parser for a fixed number of inputs, under a
//! counting allocator. Fails on any panic, and on any input that makes a parser allocate out
//! of proportion to its size (a parser trusting a size field). The targets themselves are
//! `fuzz/shared.rs`; `make fuzz` runs the same targets under libFuzzer for longer.
//!
//! `TEACHCAM_FUZZ_ITERS` sets the inputs per target (default 200 000: 22.6 s in all on the 2-core development machine),
//! `TEACHCAM_FUZZ_SEED` the seed. `cargo test --test fuzz_stable -- --ignored write_seed_corpus` rewrites the seeds.

#[path = "../fuzz/shared.rs"]
mod shared;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes allocated now, and the most allocated at once since the last reset.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are only
// arithmetic on the sizes it was asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Most a parser may allocate beyond the input itself (decoding a 1-megapixel image under the
/// image target's limit needs about 8 MB).
const ALLOC_BOUND: usize = 48 << 20;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every corpus file of `target`: seeds (`seed-*`, valid inputs) and regression inputs
/// (`regress-*`, what fuzzing once found).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    corpus_named(target).into_iter().map(|(_, b)| b).collect()
}

/// The valid seeds of `target` only.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    corpus_named(target)
        .into_iter()
        .filter(|(n, _)| n.starts_with("seed"))
        .map(|(_, b)| b)
        .collect()
}

fn corpus_named(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("no corpus for {target}: {e}"))
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v.into_iter()
        .map(|(p, b)| (p.file_name().unwrap().to_string_lossy().into_owned(), b))
        .collect()
}

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "-1e308",
    "NaN",
    "inf",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999",
    "1e20",
    "0.0000001",
    "[]",
    "{}",
    "\"\"",
    "null",
];

/// One mutation of `b`: byte-level, or a number-looking run replaced by a hostile number.
fn mutate(b: &mut Vec<u8>, r: &mut Rng, other: &[u8]) {
    let len = b.len();
    match r.below(9) {
        0 if len > 0 => {
            let i = r.below(len);
            b[i] ^= 1 << r.below(8);
        }
        1 if len > 0 => {
            let i = r.below(len);
            b[i] = [0, 0xFF, 0x7F, 0x80, b'0', b'9', b'\n', b'"', b'[', b'/'][r.below(10)];
        }
        2 => {
            let i = r.below(len + 1);
            let n = 1 + r.below(16);
            let ins: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
            b.splice(i..i, ins);
        }
        3 if len > 0 => {
            let i = r.below(len);
            let n = 1 + r.below((len - i).min(64));
            b.drain(i..i + n);
        }
        4 if len > 0 => b.truncate(r.below(len)),
        5 if len > 0 => {
            // Duplicate a range (repeated structure: keys, entries).
            let i = r.below(len);
            let n = 1 + r.below((len - i).min(512));
            let chunk = b[i..i + n].to_vec();
            let at = r.below(len + 1);
            b.splice(at..at, chunk);
        }
        6 if !other.is_empty() => {
            // Splice in part of another corpus file.
            let i = r.below(other.len());
            let n = 1 + r.below((other.len() - i).min(256));
            let at = r.below(len + 1);
            b.splice(at..at, other[i..i + n].iter().copied());
        }
        _ => {
            // Replace a run of digits with a hostile number.
            let digits: Vec<usize> = (0..len).filter(|&i| b[i].is_ascii_digit()).collect();
            if let Some(&start) = digits.get(r.below(digits.len())) {
                let mut end = start;
                while end < len && (b[end].is_ascii_digit() || b[end] == b'.') {
                    end += 1;
                }
                let n = NUMBERS[r.below(NUMBERS.len())];
                b.splice(start..end, n.bytes());
            }
        }
    }
}

#[test]
fn every_parser_survives_mutated_corpus_inputs_with_bounded_memory() {
    let iters: usize = std::env::var("TEACHCAM_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("TEACHCAM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    check_seeds();
    // One test function, so no other test thread allocates while peaks are measured.
    for &target in shared::TARGETS {
        let corpus = corpus(target);
        assert!(!corpus.is_empty(), "empty corpus for {target}");
        let mut r = Rng(seed ^ (target.len() as u64 * 0x1234_5678));
        let t0 = std::time::Instant::now();
        let mut worst = 0usize;
        for i in 0..iters {
            let base = &corpus[i % corpus.len()];
            let other = &corpus[r.below(corpus.len())];
            let mut input = base.clone();
            // The seeds themselves first, then 1 to 6 stacked mutations.
            if i >= corpus.len() {
                for _ in 0..1 + r.below(6) {
                    mutate(&mut input, &mut r, other);
                }
            }
            let before = LIVE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            let outcome = std::panic::catch_unwind(|| shared::run(target, &input));
            let used = PEAK.load(Ordering::Relaxed).saturating_sub(before);
            if outcome.is_err() || used > ALLOC_BOUND + 64 * input.len() {
                let dump = std::env::temp_dir().join(format!("teachcam-fuzz-{target}-{i}"));
                std::fs::write(&dump, &input).unwrap();
                panic!(
                    "{target}: input {i} (saved to {}) {}",
                    dump.display(),
                    if outcome.is_err() {
                        "panicked".to_string()
                    } else {
                        format!("allocated {used} bytes")
                    }
                );
            }
            worst = worst.max(used);
        }
        eprintln!(
            "fuzz {target}: {iters} inputs in {:.1} s, 0 panics, largest allocation peak {} kB",
            t0.elapsed().as_secs_f64(),
            worst / 1024
        );
    }
}

/// Rewrite the committed seed corpus (run by hand after a format change).
#[test]
#[ignore]
fn write_seed_corpus() {
    use serde_json::json;
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus_dir(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    write(
        "framed",
        "seed-3",
        &teachcam::framed::encode("fuzz", 1, &json!({"n": 3, "note": "x"}), &[1.0, -2.5, 3.0]),
    );
    write(
        "framed",
        "seed-0",
        &teachcam::framed::encode("fuzz", 1, &json!({"n": 0}), &[]),
    );
    let head = teachcam::head::Head {
        classes: vec!["cup".into(), "pen".into()],
        dim: 4,
        mean: vec![0.1; 4],
        inv_std: vec![2.0; 4],
        weights: vec![1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.5, 0.0],
        bias: vec![0.1, -0.1],
        threshold: 0.5,
        backbone: teachcam::backbone::BackboneId {
            digest: "ab".repeat(32),
            precision: "int8".into(),
            input_size: Some(224),
            kind: None,
        },
        info: Default::default(),
    };
    write("head", "seed-2x4", &head.encode());
    let set = teachcam::embcache::EmbeddingSet {
        dim: 3,
        backbone: teachcam::backbone::BackboneId {
            digest: "cd".repeat(32),
            precision: "int8".into(),
            input_size: Some(224),
            kind: None,
        },
        classes: vec!["a".into(), "b".into()],
        items: vec![
            teachcam::embcache::CachedItem {
                path: "a/1.jpg".into(),
                label: 0,
                split: Some("train".into()),
            },
            teachcam::embcache::CachedItem {
                path: "b/1.jpg".into(),
                label: 1,
                split: Some("val".into()),
            },
        ],
        data: vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    };
    write("tce", "seed-2", &set.encode());
    // A state directory with three samples: its records and its export.
    let d = tempfile::tempdir().unwrap();
    let (mut store, _) = teachcam::store::Store::open(d.path()).unwrap();
    store.set_backbone(shared::BACKBONE);
    for (i, label) in ["ball", "block", "ball"].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([(x * 9) as u8, (y * 13) as u8, (i * 80) as u8])
        });
        let thumb = teachcam::frame::encode_jpeg(&img).unwrap();
        let e: Vec<f32> = (0..shared::DIM)
            .map(|k| (k + i) as f32 * 0.25 + 0.1)
            .collect();
        store
            .add(label, &e, &thumb, 1_700_000_000_000 + i as u64)
            .unwrap();
    }
    write(
        "record",
        "seed-1",
        &std::fs::read(store.record_path(1)).unwrap(),
    );
    let tar = d.path().join("export.tar");
    teachcam::dataset::export_tar(&store, &tar).unwrap();
    write("tar", "seed-3-samples", &std::fs::read(&tar).unwrap());
    let img = image::RgbImage::from_fn(16, 12, |x, y| {
        image::Rgb([(x * 9) as u8, (y * 13) as u8, 7])
    });
    write(
        "image",
        "seed.jpg",
        &teachcam::frame::encode_jpeg(&img).unwrap(),
    );
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    write("image", "seed.png", &png.into_inner());
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("cross/teachcam.toml");
    write(
        "config",
        "seed-shipped.toml",
        &std::fs::read(shipped).unwrap(),
    );
    write(
        "config",
        "seed-small.toml",
        b"state_dir = \"/tmp/s\"\nclasses = [\"a\", \"b\"]\nthreshold = 0.6\nsmoothing = 3\n\
          [camera]\nuri = \"synthetic:1500\"\nfps = 20\nwidth = 320\nheight = 240\n\
          [gpio]\nuri = \"script:300@1,1900@2+500\"\ndebounce_ms = 20\nhold_ms = 800\nrepeat_ms = 250\n\
          [train]\nbudget_s = 2.5\n[model]\nprecision = \"w8\"\ninput_size = 160\n",
    );
}

/// The seeds must parse, or mutations of them explore only the error paths.
fn check_seeds() {
    use std::io::Cursor;
    for s in seeds("tar") {
        let mut n = 0;
        teachcam::dataset::read_tar(
            &mut Cursor::new(&s),
            s.len() as u64,
            "seed",
            shared::BACKBONE,
            shared::DIM,
            |i| {
                assert!(i.embedding.is_some(), "seed embeddings are this backbone's");
                n += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            shared::fix_tar(&s),
            s,
            "fix-ups leave a valid tarball unchanged"
        );
    }
    for s in seeds("head") {
        teachcam::head::Head::decode(Path::new("seed"), &s).unwrap();
    }
    for s in seeds("tce") {
        teachcam::embcache::EmbeddingSet::decode(Path::new("seed"), &s).unwrap();
    }
    for s in seeds("record") {
        teachcam::store::decode_record(Path::new("seed"), &s).unwrap();
    }
    for s in seeds("image") {
        teachcam::decode::decode(&s, None).unwrap();
    }
    for s in seeds("config") {
        let p = Path::new("seed.toml");
        let f = teachcam::config::ConfigFile::parse(std::str::from_utf8(&s).unwrap(), p).unwrap();
        teachcam::config::RunConfig::resolve(Some((p, f)), Default::default()).unwrap();
    }
}
