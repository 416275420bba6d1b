//! `teachcam fewshot`: what a few presses teach, measured on a photo set with `train/` and
//! `val/`, as curves over presses per class with several random draws.
//!
//! The protocol (fixed, so backbones and versions compare):
//! - A *draw* shuffles each class's training photos with its own seed; its first `p` photos
//!   are the `p` presses of that class (so a larger `p` extends a smaller one).
//! - A press yields, per mode: `plain`, the photo (one frame, as a press without a burst);
//!   `burst`, the photo and `burst − 1` camera-like variations standing in for the next
//!   frames of a burst (`augment::burst_like`: photos have no next frame; the appliance's
//!   bursts are real frames); `augment` and `burst+augment`, the same plus training
//!   variations of each stored sample (`--augment`, default 4) made from its stored thumbnail
//!   (`augment::augmented`), while the class has fewer
//!   than [`AUGMENT_BELOW`] samples. (The appliance itself adds none: they measured no gain,
//!   docs/measurements.md, "What a few presses teach".)
//! - The head is the one the appliance would end up with: imprinted, then fine-tuned with the
//!   appliance's settings (grouped by press, so a press's frames are held out together), the
//!   fine-tune kept only when the session's rule takes it ([`crate::session::fine_tune_wins`]).
//! - Accuracy is the head's best class over every `val/` photo, whatever its confidence
//!   (the threshold's effect is the open-set figures' subject).
//! - Open set (three classes or more): per draw one class is left untaught; reported is how
//!   often its photos are called "unknown" rather than a taught class, and how often taught
//!   classes' photos are called "unknown", at the device's threshold.
//!
//! Must not: time anything (speed is `teachcam bench`'s, in ratios) or write files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{jobs_or_default, load_backbone, progress};
use crate::augment;
use crate::backbone::Backbone;
use crate::cli::{FewshotArgs, Global, PressMode as Mode};
use crate::daemon::trainer::Job;
use crate::frame::Frame;
use crate::head::Head;
use crate::imagefolder::{self, Split};
use crate::rng::Rng;
use crate::session::fine_tune_wins;

/// One view of a training photo: `frame` 0 is the photo, 1.. its burst stand-ins; `view` 0 is
/// the frame itself, 1.. the training variations of its thumbnail.
type ViewKey = (usize, usize, usize);

/// Mean, lowest and highest of a list of accuracies, and the list.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    mean: f32,
    min: f32,
    max: f32,
    draws: Vec<f32>,
}

impl Spread {
    fn of(v: Vec<f32>) -> Spread {
        let n = v.len().max(1) as f32;
        Spread {
            mean: v.iter().sum::<f32>() / n,
            min: v.iter().copied().fold(f32::INFINITY, f32::min),
            max: v.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            draws: v,
        }
    }
}

/// Open-set figures for one mode.
#[derive(Debug, Clone, Serialize)]
pub struct OpenSet {
    /// Presses per taught class.
    presses: usize,
    /// Fraction of the untaught class's photos called "unknown" (higher is better).
    untaught_unknown: Spread,
    /// Fraction of taught classes' photos called "unknown" (lower is better).
    taught_unknown: Spread,
    /// Accuracy on the taught classes' photos.
    taught_accuracy: Spread,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    dataset: String,
    backbone: String,
    precision: String,
    classes: usize,
    val_photos: usize,
    draws: usize,
    burst: usize,
    training_views: usize,
    threshold: f32,
    presses: Vec<usize>,
    /// Mode → presses → accuracy over draws.
    accuracy: BTreeMap<&'static str, BTreeMap<usize, Spread>>,
    /// Mode → open-set figures (absent below three classes).
    open_set: BTreeMap<&'static str, OpenSet>,
    /// Fine-tunes kept by the session's rule, of those run.
    fine_tunes_kept: (usize, usize),
    embeddings: usize,
    seconds: f64,
}

/// A class gets training variations while it has fewer stored samples than this: they help
/// most with few examples, and each costs a backbone pass.
const AUGMENT_BELOW: usize = 20;

/// A seed for variation `c` of item `b` under seed `a` (SplitMix64's finaliser over the
/// three): the same sample always gets the same variations, whoever makes them.
fn view_seed(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(c.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Variation `v` (1-based) of a stored sample whose variations are seeded by `sample_seed`,
/// made from its thumbnail.
fn training_view(thumb: &crate::frame::Frame, sample_seed: u64, v: usize) -> crate::frame::Frame {
    crate::augment::augmented(
        thumb,
        &mut crate::rng::Rng::new(view_seed(sample_seed, v as u64, 7)),
    )
}

/// A labelled training photo.
struct Photo {
    path: PathBuf,
    class: usize,
}

pub(super) fn cmd_fewshot(g: &Global, a: &FewshotArgs) -> Result<()> {
    let t0 = Instant::now();
    if a.presses.iter().any(|&p| !(1..=1000).contains(&p))
        || !(1..=1000).contains(&a.draws)
        || !(1..=100).contains(&a.burst)
        || a.augment > 64
        || a.open_set_presses == 0
    {
        bail!(
            "presses and draws are 1..=1000, burst 1..=100, augment 0..=64, open-set presses at least 1"
        );
    }
    let train = imagefolder::scan(&imagefolder::split_dir(&a.dataset, Split::Train)?)?;
    let val = imagefolder::scan(&imagefolder::split_dir(&a.dataset, Split::Val)?)?;
    let classes = train.classes.clone();
    if classes.len() < 2 {
        bail!(
            "{} has {} class(es); few-shot needs two or more",
            a.dataset.display(),
            classes.len()
        );
    }
    let photos: Vec<Photo> = train
        .items
        .iter()
        .map(|i| Photo {
            path: i.path.clone(),
            class: i.label,
        })
        .collect();
    let backbone = load_backbone(g)?;
    let jobs = jobs_or_default(a.jobs);

    // The validation photos, embedded once.
    let val_items: Vec<(PathBuf, usize)> = val
        .items
        .iter()
        .filter_map(|i| {
            let name = &val.classes[i.label];
            classes
                .iter()
                .position(|c| c == name)
                .map(|k| (i.path.clone(), k))
        })
        .collect();
    let val_paths: Vec<PathBuf> = val_items.iter().map(|(p, _)| p.clone()).collect();
    let val_embs = super::embed_paths(&backbone, &val_paths, jobs);
    let val_set: Vec<(Vec<f32>, usize)> = val_embs
        .into_iter()
        .zip(&val_items)
        .filter_map(|(e, (_, k))| e.map(|e| (e, *k)))
        .collect();
    if val_set.is_empty() {
        bail!(
            "no val/ photo of a trained class could be read in {}",
            a.dataset.display()
        );
    }

    // Each draw's presses: per class, its photos in the draw's order.
    let pmax = a.presses.iter().copied().max().unwrap_or(1);
    let draws: Vec<Vec<Vec<usize>>> = (0..a.draws)
        .map(|d| {
            let mut rng = Rng::new(a.seed.wrapping_mul(1_000_003).wrapping_add(d as u64));
            (0..classes.len())
                .map(|k| {
                    let mut idx: Vec<usize> = (0..photos.len())
                        .filter(|&i| photos[i].class == k)
                        .collect();
                    rng.shuffle(&mut idx);
                    idx.truncate(pmax);
                    idx
                })
                .collect()
        })
        .collect();
    if let Some(k) = (0..classes.len()).find(|&k| draws[0][k].is_empty()) {
        bail!("class {} has no training photo", classes[k]);
    }

    // Every view any training will read, embedded once (per photo, on `jobs` threads).
    let modes: Vec<Mode> = if a.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        a.modes.clone()
    };
    let frames = if modes.iter().any(|m| m.burst()) {
        a.burst.max(1)
    } else {
        1
    };
    let views = if modes.iter().any(|m| m.augment()) {
        a.augment
    } else {
        0
    };
    let mut wanted: BTreeMap<usize, BTreeSet<(usize, usize)>> = BTreeMap::new();
    for draw in &draws {
        for idx in draw {
            for &i in idx {
                for f in 0..frames {
                    for v in 0..=views {
                        wanted.entry(i).or_default().insert((f, v));
                    }
                }
            }
        }
    }
    let embs = embed_views(&backbone, &photos, &wanted, a.seed, jobs)?;

    let threshold = a.threshold.get();
    let mut report = Report {
        dataset: a.dataset.display().to_string(),
        backbone: g.backbone().name().into(),
        precision: g.precision().name().into(),
        classes: classes.len(),
        val_photos: val_set.len(),
        draws: a.draws,
        burst: a.burst,
        training_views: a.augment,
        threshold,
        presses: a.presses.clone(),
        accuracy: BTreeMap::new(),
        open_set: BTreeMap::new(),
        fine_tunes_kept: (0, 0),
        embeddings: embs.len(),
        seconds: 0.0,
    };
    let id = backbone.id().clone();
    let teach = |draw: &[Vec<usize>], p: usize, mode: Mode, taught: &[usize], seed: u64| {
        let job = job_for(&embs, draw, p, mode, a.burst, a.augment, taught, &classes);
        learned_head(&job, &id, threshold, seed)
    };
    let pb = progress(modes.len() * a.presses.len() * a.draws, "training");
    let all: Vec<usize> = (0..classes.len()).collect();
    for &mode in &modes {
        let mut by_p = BTreeMap::new();
        for &p in &a.presses {
            let mut accs = Vec::new();
            for (d, draw) in draws.iter().enumerate() {
                let (head, kept) = teach(draw, p, mode, &all, d as u64)?;
                report.fine_tunes_kept.0 += kept as usize;
                report.fine_tunes_kept.1 += 1;
                accs.push(accuracy(&head, &val_set, &classes, None).0);
                pb.inc(1);
            }
            by_p.insert(p, Spread::of(accs));
        }
        report.accuracy.insert(mode.name(), by_p);
        if classes.len() >= 3 {
            let p = a.open_set_presses.min(pmax);
            let (mut unk_out, mut unk_in, mut acc_in) = (Vec::new(), Vec::new(), Vec::new());
            for (d, draw) in draws.iter().enumerate() {
                let left_out = d % classes.len();
                let taught: Vec<usize> = all.iter().copied().filter(|&k| k != left_out).collect();
                let (head, _) = teach(draw, p, mode, &taught, d as u64)?;
                let (acc, unknown_in, unknown_out) =
                    accuracy(&head, &val_set, &classes, Some(left_out));
                unk_out.push(unknown_out);
                unk_in.push(unknown_in);
                acc_in.push(acc);
            }
            report.open_set.insert(
                mode.name(),
                OpenSet {
                    presses: p,
                    untaught_unknown: Spread::of(unk_out),
                    taught_unknown: Spread::of(unk_in),
                    taught_accuracy: Spread::of(acc_in),
                },
            );
        }
    }
    pb.finish_and_clear();
    report.seconds = t0.elapsed().as_secs_f64();
    if a.json {
        out!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report)?;
    }
    Ok(())
}

/// Embeddings of the `wanted` views of each photo, made on `jobs` threads (one photo at a
/// time per thread: it is decoded once for all its views).
fn embed_views(
    backbone: &Backbone,
    photos: &[Photo],
    wanted: &BTreeMap<usize, BTreeSet<(usize, usize)>>,
    seed: u64,
    jobs: usize,
) -> Result<BTreeMap<ViewKey, Vec<f32>>> {
    let list: Vec<(&usize, &BTreeSet<(usize, usize)>)> = wanted.iter().collect();
    let total: usize = list.iter().map(|(_, s)| s.len()).sum();
    let out = Mutex::new(BTreeMap::new());
    let failed = Mutex::new(None);
    let next = AtomicUsize::new(0);
    let pb = progress(total, "embedding views");
    std::thread::scope(|s| {
        for _ in 0..jobs.min(list.len()).max(1) {
            s.spawn(|| {
                let mut emb = backbone.embedder();
                while let Some(&(&i, keys)) = list.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let r = photo_views(&photos[i].path, i, keys, seed, &mut |f: &Frame| {
                        emb.embed(&f.rgb, f.width, f.height)
                            .map_err(|e| e.to_string())
                    });
                    match r {
                        Ok(v) => {
                            pb.inc(v.len() as u64);
                            if let Ok(mut o) = out.lock() {
                                o.extend(v);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(format!("{}: {e}", photos[i].path.display()));
                            }
                        }
                    }
                }
            });
        }
    });
    pb.finish_and_clear();
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        bail!("cannot use a training photo: {e}");
    }
    Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// The views `keys` of photo `i`: its burst frames (frame 0 the photo itself), and for each
/// the training variations of its stored thumbnail, each embedded by `embed`.
fn photo_views(
    path: &std::path::Path,
    i: usize,
    keys: &BTreeSet<(usize, usize)>,
    seed: u64,
    embed: &mut dyn FnMut(&Frame) -> Result<Vec<f32>, String>,
) -> Result<Vec<(ViewKey, Vec<f32>)>, String> {
    let photo = imagefolder::load_rgb(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let frames: BTreeSet<usize> = keys.iter().map(|k| k.0).collect();
    for f in frames {
        let frame = if f == 0 {
            photo.clone()
        } else {
            augment::burst_like(&photo, &mut Rng::new(view_seed(seed, i as u64, f as u64)))
        };
        let mut thumb = None;
        for &(_, v) in keys.iter().filter(|k| k.0 == f) {
            let e = if v == 0 {
                embed(&frame)?
            } else {
                if thumb.is_none() {
                    thumb = Some(stored_thumbnail(&frame)?);
                }
                let t = thumb.as_ref().ok_or("no thumbnail")?;
                let sample_seed = view_seed(seed, i as u64, f as u64);
                embed(&training_view(t, sample_seed, v))?
            };
            out.push(((i, f, v), e));
        }
    }
    Ok(out)
}

/// What the store keeps of a frame, decoded: the JPEG thumbnail the appliance writes.
fn stored_thumbnail(frame: &Frame) -> Result<Frame, String> {
    let jpeg = crate::frame::thumbnail_jpeg(frame).map_err(|e| e.to_string())?;
    crate::frame::decode_jpeg(&jpeg, "thumbnail").map_err(|e| e.to_string())
}

/// The training job the appliance would build after `p` presses per class in `taught`.
#[allow(clippy::too_many_arguments)]
fn job_for(
    embs: &BTreeMap<ViewKey, Vec<f32>>,
    draw: &[Vec<usize>],
    p: usize,
    mode: Mode,
    burst: usize,
    views: usize,
    taught: &[usize],
    classes: &[String],
) -> Job {
    let frames = if mode.burst() { burst.max(1) } else { 1 };
    let names: Vec<String> = taught.iter().map(|&k| classes[k].clone()).collect();
    let mut job = Job {
        classes: names,
        ..Job::default()
    };
    for (slot, &k) in taught.iter().enumerate() {
        let presses = &draw[k][..p.min(draw[k].len())];
        // Variations only while the class is small, as the appliance does.
        let samples = presses.len() * frames;
        let v_max = if mode.augment() && samples < AUGMENT_BELOW {
            views
        } else {
            0
        };
        for &i in presses {
            for f in 0..frames {
                for v in 0..=v_max {
                    if let Some(e) = embs.get(&(i, f, v)) {
                        job.dim = e.len();
                        job.data.extend_from_slice(e);
                        job.labels.push(slot);
                        job.groups.push(i as u64);
                    }
                }
            }
        }
    }
    job
}

/// The head the appliance ends up with for `job`: the imprint, replaced by the fine-tune when
/// the session's rule takes it. Also whether it did.
fn learned_head(
    job: &Job,
    id: &crate::backbone::BackboneId,
    threshold: f32,
    seed: u64,
) -> Result<(Head, bool)> {
    let imprint = job
        .imprint(id, threshold)
        .map_err(anyhow::Error::msg)?
        .context("no samples to learn from")?;
    let cfg = crate::head::train::TrainConfig {
        seed,
        threshold,
        ..Default::default()
    };
    let ft = job.fine_tune(id, &cfg).map_err(anyhow::Error::msg)?;
    let (wins, _, _) = fine_tune_wins(None, &ft);
    Ok(if wins {
        ((*ft.head).clone(), true)
    } else {
        (imprint, false)
    })
}

/// On `val`: accuracy (best class) over the taught classes' photos, the fraction of them called
/// "unknown", and the fraction of the `left_out` class's photos called "unknown".
fn accuracy(
    head: &Head,
    val: &[(Vec<f32>, usize)],
    classes: &[String],
    left_out: Option<usize>,
) -> (f32, f32, f32) {
    let (mut right, mut taught, mut unknown_in, mut out, mut unknown_out) = (0, 0, 0, 0, 0);
    for (e, k) in val {
        let p = head.predict(e);
        if Some(*k) == left_out {
            out += 1;
            unknown_out += usize::from(!p.known);
            continue;
        }
        taught += 1;
        unknown_in += usize::from(!p.known);
        right += usize::from(head.classes[p.best] == classes[*k]);
    }
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f32 / b as f32 };
    (
        frac(right, taught),
        frac(unknown_in, taught),
        frac(unknown_out, out),
    )
}

fn print_report(r: &Report) -> Result<()> {
    out!(
        "{}: {} classes, {} val photos; backbone {} {}; {} draws; burst {} frames, {} training views per sample",
        r.dataset,
        r.classes,
        r.val_photos,
        r.backbone,
        r.precision,
        r.draws,
        r.burst,
        r.training_views
    );
    let mut head = format!("{:<15}", "presses/class");
    for p in &r.presses {
        head.push_str(&format!(" {:>20}", p));
    }
    out!("{head}");
    for mode in Mode::ALL {
        let Some(by_p) = r.accuracy.get(mode.name()) else {
            continue;
        };
        let mut line = format!("{:<15}", mode.name());
        for p in &r.presses {
            if let Some(s) = by_p.get(p) {
                line.push_str(&format!(
                    " {:>20}",
                    format!("{:.3} ({:.2}-{:.2})", s.mean, s.min, s.max)
                ));
            }
        }
        out!("{line}");
    }
    for mode in Mode::ALL {
        let Some(o) = r.open_set.get(mode.name()) else {
            continue;
        };
        out!(
            "open set, {}, {} presses: untaught class called unknown {:.2} ({:.2}-{:.2}); taught called unknown {:.2}; taught accuracy {:.3} (threshold {})",
            mode.name(),
            o.presses,
            o.untaught_unknown.mean,
            o.untaught_unknown.min,
            o.untaught_unknown.max,
            o.taught_unknown.mean,
            o.taught_accuracy.mean,
            r.threshold
        );
    }
    out!(
        "fine-tunes kept {}/{}; {} embeddings; {:.0} s",
        r.fine_tunes_kept.0,
        r.fine_tunes_kept.1,
        r.embeddings,
        r.seconds
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_has_a_group_per_press_and_variations_only_for_small_classes() {
        let mut embs = BTreeMap::new();
        for i in 0..4 {
            for f in 0..2 {
                for v in 0..3 {
                    embs.insert((i, f, v), vec![i as f32, f as f32, v as f32]);
                }
            }
        }
        let draw = vec![vec![0, 1], vec![2, 3]];
        let classes = vec!["a".to_string(), "b".to_string()];
        let plain = job_for(&embs, &draw, 1, Mode::Plain, 2, 2, &[0, 1], &classes);
        assert_eq!(plain.labels, [0, 1]);
        assert_eq!(plain.groups, [0, 2]);
        let all = job_for(&embs, &draw, 2, Mode::BurstAugment, 2, 2, &[0, 1], &classes);
        // 2 presses × 2 frames × (1 + 2 variations) per class.
        assert_eq!(all.labels.len(), 24);
        assert_eq!(all.groups.iter().filter(|&&g| g == 1).count(), 6);
        // One class left untaught: its rows are gone and labels index the taught list.
        let one = job_for(&embs, &draw, 2, Mode::Burst, 2, 2, &[1], &classes);
        assert_eq!(one.classes, ["b"]);
        assert!(one.labels.iter().all(|&l| l == 0) && one.labels.len() == 4);
    }

    #[test]
    fn spreads_summarise_draws() {
        let s = Spread::of(vec![0.5, 1.0, 0.75]);
        assert_eq!((s.mean, s.min, s.max), (0.75, 0.5, 1.0));
    }
}
