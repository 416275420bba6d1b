//! Training the linear softmax head, on a workstation or on the device.
//!
//! Recipe (all seeded, so the same inputs and seed give the same head bit for bit):
//! 1. L2-normalise embeddings; standardise per dimension with statistics from the training
//!    rows, the variance shrunk towards the pooled variance so two or three examples per class
//!    still give sane scales; the statistics are stored in the head.
//! 2. Warm start by imprinting: each class's weight row is its normalised mean feature vector,
//!    scaled so logits are `10·cos`. One example per class already classifies.
//! 3. Softmax cross-entropy with L2 regularisation in the gradient, Adam, mini-batches drawn
//!    class-balanced (pick a class uniformly, then one of its examples) so a class with many
//!    captures does not drown one with few.
//! 4. Model selection on a held-out split (stratified, per class): a small grid of L2
//!    strengths, each early-stopped on held-out loss; the best by held-out accuracy (then loss)
//!    wins. Candidates run on parallel threads with their own seeds, so results do not depend
//!    on scheduling.
//! 5. Refit on everything (training + held-out) for the selected strength and epoch count.
//!
//! Must not: read files, clocks (beyond the optional deadline the caller passes) or devices.

use std::time::Instant;

use super::{Head, TrainInfo, dot, l2_normalise, softmax};
use crate::rng::Rng;

/// Training knobs. [`TrainConfig::default`] is what the CLI and the daemon use.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// RNG seed.
    pub seed: u64,
    /// L2 strengths to try.
    pub l2_grid: Vec<f32>,
    /// Fraction of each class held out for selection when no explicit validation set is given.
    pub holdout: f32,
    /// Upper bound on epochs.
    pub max_epochs: usize,
    /// Epochs without held-out improvement before stopping.
    pub patience: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// Confidence threshold stored in the head.
    pub threshold: f32,
    /// Stop early (keeping the best so far) when this instant passes.
    pub deadline: Option<Instant>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            l2_grid: vec![1e-4, 1e-3, 1e-2],
            holdout: 0.15,
            max_epochs: 60,
            patience: 6,
            batch: 32,
            lr: 2e-3,
            threshold: 0.5,
            deadline: None,
        }
    }
}

/// Why training could not start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    /// No examples at all.
    #[error("no training examples")]
    NoData,
    /// A class has no training example.
    #[error("class {0:?} has no training examples; add at least one")]
    EmptyClass(String),
    /// Shapes do not add up.
    #[error("{0}")]
    Shape(String),
}

/// Labelled embeddings, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Examples<'a> {
    /// Embedding length.
    pub dim: usize,
    /// `labels.len() · dim` values.
    pub data: &'a [f32],
    /// One label per row.
    pub labels: &'a [usize],
}

/// One grid point's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// L2 strength.
    pub l2: f32,
    /// Best epoch (1-based) by held-out loss.
    pub epochs: usize,
    /// Held-out accuracy at that epoch.
    pub accuracy: f32,
    /// Held-out loss at that epoch.
    pub loss: f32,
}

/// What training did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Grid results (empty when there was nothing to hold out).
    pub candidates: Vec<Candidate>,
    /// Selected strength.
    pub l2: f32,
    /// Epochs of the final fit.
    pub epochs: usize,
    /// Held-out accuracy of the selected candidate.
    pub holdout_accuracy: Option<f32>,
    /// Held-out rows.
    pub holdout_count: usize,
    /// Accuracy of the final head on all of its training rows.
    pub train_accuracy: f32,
}

/// Standardised design matrix with labels.
struct Set {
    z: Vec<f32>,
    y: Vec<usize>,
}

struct Stats {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

fn normalised(ex: &Examples, idx: &[usize]) -> Vec<f32> {
    let d = ex.dim;
    let mut out = vec![0f32; idx.len() * d];
    for (k, &i) in idx.iter().enumerate() {
        l2_normalise(&ex.data[i * d..(i + 1) * d], &mut out[k * d..(k + 1) * d]);
    }
    out
}

fn stats(u: &[f32], d: usize) -> Stats {
    let n = (u.len() / d).max(1);
    let mut mean = vec![0f64; d];
    for row in u.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = vec![0f64; d];
    for row in u.chunks_exact(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    var.iter_mut().for_each(|s| *s /= n as f64);
    // Pooled variance; for a single example fall back to that of a random unit vector.
    let pooled = (var.iter().sum::<f64>() / d as f64).max(1.0 / d as f64 * 1e-2);
    const SHRINK: f64 = 8.0;
    let inv_std = var
        .iter()
        .map(|v| (1.0 / ((n as f64 * v + SHRINK * pooled) / (n as f64 + SHRINK)).sqrt()) as f32)
        .collect();
    Stats {
        mean: mean.into_iter().map(|m| m as f32).collect(),
        inv_std,
    }
}

fn standardise(u: &mut [f32], d: usize, st: &Stats) {
    for row in u.chunks_exact_mut(d) {
        for ((v, m), s) in row.iter_mut().zip(&st.mean).zip(&st.inv_std) {
            *v = (*v - m) * s;
        }
    }
}

/// Parameters being optimised.
#[derive(Clone)]
struct Params {
    w: Vec<f32>,
    b: Vec<f32>,
}

fn imprint(set: &Set, c: usize, d: usize) -> Params {
    let mut w = vec![0f32; c * d];
    let mut counts = vec![0usize; c];
    for (row, &y) in set.z.chunks_exact(d).zip(&set.y) {
        counts[y] += 1;
        for (a, v) in w[y * d..(y + 1) * d].iter_mut().zip(row) {
            *a += v;
        }
    }
    let scale = 10.0 / (d as f32).sqrt();
    for k in 0..c {
        let r = &mut w[k * d..(k + 1) * d];
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v *= scale / n);
        }
    }
    Params { w, b: vec![0.0; c] }
}

/// Mean cross-entropy and accuracy of `p` on `set`.
fn evaluate(p: &Params, set: &Set, c: usize, d: usize) -> (f32, f32) {
    let mut logits = vec![0f32; c];
    let (mut loss, mut correct) = (0f64, 0usize);
    for (row, &y) in set.z.chunks_exact(d).zip(&set.y) {
        for (k, l) in logits.iter_mut().enumerate() {
            *l = dot(&p.w[k * d..(k + 1) * d], row) + p.b[k];
        }
        let best = argmax(&logits);
        softmax(&mut logits);
        loss -= (logits[y].max(1e-12) as f64).ln();
        correct += usize::from(best == y);
    }
    let n = set.y.len().max(1) as f64;
    ((loss / n) as f32, (correct as f64 / n) as f32)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .copied()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |a, (i, x)| if x > a.1 { (i, x) } else { a },
        )
        .0
}

/// Adam state and the per-class index lists for balanced sampling.
struct Optimiser {
    mw: Vec<f32>,
    vw: Vec<f32>,
    mb: Vec<f32>,
    vb: Vec<f32>,
    t: i32,
}

fn run_epoch(
    p: &mut Params,
    opt: &mut Optimiser,
    set: &Set,
    by_class: &[Vec<usize>],
    cfg: &TrainConfig,
    l2: f32,
    rng: &mut Rng,
    d: usize,
) {
    let c = by_class.len();
    let present: Vec<usize> = (0..c).filter(|&k| !by_class[k].is_empty()).collect();
    let steps = set.y.len().div_ceil(cfg.batch).max(8);
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut gw = vec![0f32; c * d];
    let mut gb = vec![0f32; c];
    let mut logits = vec![0f32; c];
    for _ in 0..steps {
        gw.iter_mut().for_each(|g| *g = 0.0);
        gb.iter_mut().for_each(|g| *g = 0.0);
        for _ in 0..cfg.batch {
            let class = present[rng.below(present.len())];
            let i = by_class[class][rng.below(by_class[class].len())];
            let row = &set.z[i * d..(i + 1) * d];
            for (k, l) in logits.iter_mut().enumerate() {
                *l = dot(&p.w[k * d..(k + 1) * d], row) + p.b[k];
            }
            softmax(&mut logits);
            logits[set.y[i]] -= 1.0;
            for (k, &g) in logits.iter().enumerate() {
                gb[k] += g;
                for (a, v) in gw[k * d..(k + 1) * d].iter_mut().zip(row) {
                    *a += g * v;
                }
            }
        }
        let inv_b = 1.0 / cfg.batch as f32;
        opt.t += 1;
        let (c1, c2) = (1.0 - b1.powi(opt.t), 1.0 - b2.powi(opt.t));
        let lr = cfg.lr;
        for (((w, g), m), v) in p.w.iter_mut().zip(&gw).zip(&mut opt.mw).zip(&mut opt.vw) {
            let g = g * inv_b + l2 * *w;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *w -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
        }
        for (((w, g), m), v) in p.b.iter_mut().zip(&gb).zip(&mut opt.mb).zip(&mut opt.vb) {
            let g = g * inv_b;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *w -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
        }
    }
}

fn by_class(y: &[usize], c: usize) -> Vec<Vec<usize>> {
    let mut v = vec![Vec::new(); c];
    for (i, &l) in y.iter().enumerate() {
        v[l].push(i);
    }
    v
}

/// Fit from `init` for up to `epochs`; with a held-out set, early-stop on its loss and return
/// the best parameters and (epoch, accuracy, loss); without one, run exactly `epochs`.
fn fit(
    set: &Set,
    holdout: Option<&Set>,
    init: Params,
    c: usize,
    d: usize,
    l2: f32,
    epochs: usize,
    cfg: &TrainConfig,
    seed: u64,
) -> (Params, usize, f32, f32) {
    let mut rng = Rng::new(seed);
    let groups = by_class(&set.y, c);
    let mut p = init;
    let mut opt = Optimiser {
        mw: vec![0.0; c * d],
        vw: vec![0.0; c * d],
        mb: vec![0.0; c],
        vb: vec![0.0; c],
        t: 0,
    };
    let mut best = match holdout {
        Some(h) => {
            let (loss, acc) = evaluate(&p, h, c, d);
            (p.clone(), 0, acc, loss)
        }
        None => (p.clone(), 0, f32::NAN, f32::NAN),
    };
    for epoch in 1..=epochs {
        if cfg.deadline.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        run_epoch(&mut p, &mut opt, set, &groups, cfg, l2, &mut rng, d);
        match holdout {
            Some(h) => {
                let (loss, acc) = evaluate(&p, h, c, d);
                if loss < best.3 {
                    best = (p.clone(), epoch, acc, loss);
                } else if epoch - best.1 >= cfg.patience {
                    break;
                }
            }
            None => best = (p.clone(), epoch, f32::NAN, f32::NAN),
        }
    }
    best
}

/// Stratified split of row indices: per class, `round(n·frac)` rows held out, but always
/// leaving at least one row of each class for training.
fn stratified_split(y: &[usize], c: usize, frac: f32, rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let (mut tr, mut ho) = (Vec::new(), Vec::new());
    for mut idx in by_class(y, c) {
        rng.shuffle(&mut idx);
        let k = ((idx.len() as f32 * frac).round() as usize).min(idx.len().saturating_sub(1));
        ho.extend_from_slice(&idx[..k]);
        tr.extend_from_slice(&idx[k..]);
    }
    tr.sort_unstable();
    ho.sort_unstable();
    (tr, ho)
}

fn make_set(ex: &Examples, idx: &[usize], st: &Stats) -> Set {
    let mut z = normalised(ex, idx);
    standardise(&mut z, ex.dim, st);
    Set {
        z,
        y: idx.iter().map(|&i| ex.labels[i]).collect(),
    }
}

fn validate(ex: &Examples, classes: &[String]) -> Result<(), TrainError> {
    if ex.labels.is_empty() {
        return Err(TrainError::NoData);
    }
    if ex.data.len() != ex.labels.len() * ex.dim {
        return Err(TrainError::Shape(format!(
            "{} values for {} rows of {}",
            ex.data.len(),
            ex.labels.len(),
            ex.dim
        )));
    }
    if let Some(&bad) = ex.labels.iter().find(|&&l| l >= classes.len()) {
        return Err(TrainError::Shape(format!(
            "label {bad} but only {} classes",
            classes.len()
        )));
    }
    let groups = by_class(ex.labels, classes.len());
    if let Some(k) = groups.iter().position(|g| g.is_empty()) {
        return Err(TrainError::EmptyClass(classes[k].clone()));
    }
    Ok(())
}

/// Train a head. With `val`, selection and early stopping use it and the result is the
/// early-stopped head; without, a stratified `cfg.holdout` split of `train` is used for
/// selection and the head is refitted on all of `train`.
pub fn train(
    train: Examples,
    val: Option<Examples>,
    classes: Vec<String>,
    backbone_sha256: &str,
    precision: &str,
    cfg: &TrainConfig,
) -> Result<(Head, TrainReport), TrainError> {
    validate(&train, &classes)?;
    let (c, d) = (classes.len(), train.dim);
    let mut rng = Rng::new(cfg.seed);
    let all: Vec<usize> = (0..train.labels.len()).collect();
    let (tr_idx, ho_idx) = match val {
        Some(_) => (all.clone(), Vec::new()),
        None => stratified_split(train.labels, c, cfg.holdout, &mut rng),
    };
    let st = stats(&normalised(&train, &tr_idx), d);
    let set = make_set(&train, &tr_idx, &st);
    let holdout = match val {
        Some(v) if !v.labels.is_empty() => {
            let idx: Vec<usize> = (0..v.labels.len()).collect();
            Some(make_set(&v, &idx, &st))
        }
        Some(_) => None,
        None if !ho_idx.is_empty() => Some(make_set(&train, &ho_idx, &st)),
        None => None,
    };

    // Model selection over the L2 grid, one thread per candidate.
    let init = imprint(&set, c, d);
    let mut results: Vec<(Params, Candidate)> = match &holdout {
        Some(h) => std::thread::scope(|s| {
            let handles: Vec<_> = cfg
                .l2_grid
                .iter()
                .enumerate()
                .map(|(k, &l2)| {
                    let (set, init) = (&set, init.clone());
                    s.spawn(move || {
                        let seed = cfg.seed.wrapping_add(1 + k as u64);
                        let (p, e, acc, loss) =
                            fit(set, Some(h), init, c, d, l2, cfg.max_epochs, cfg, seed);
                        (
                            p,
                            Candidate {
                                l2,
                                epochs: e,
                                accuracy: acc,
                                loss,
                            },
                        )
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        }),
        None => Vec::new(),
    };
    let chosen = results
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| {
            a.1.accuracy
                .total_cmp(&b.1.accuracy)
                .then(b.1.loss.total_cmp(&a.1.loss))
        })
        .map(|(i, _)| i);
    let candidates: Vec<Candidate> = results.iter().map(|r| r.1.clone()).collect();
    let default_l2 = cfg
        .l2_grid
        .get(cfg.l2_grid.len() / 2)
        .copied()
        .unwrap_or(1e-3);

    let (params, st, l2, epochs, holdout_accuracy) = match (chosen, val) {
        // Explicit validation set: keep the early-stopped head as selected.
        (Some(i), Some(_)) => {
            let (p, cand) = results.swap_remove(i);
            (p, st, cand.l2, cand.epochs, Some(cand.accuracy))
        }
        // Held-out split: refit on everything with the selected strength and epoch count.
        (Some(i), None) => {
            let cand = candidates[i].clone();
            let st_all = stats(&normalised(&train, &all), d);
            let full = make_set(&train, &all, &st_all);
            let init = imprint(&full, c, d);
            let epochs = cand.epochs.max(1);
            let (p, ..) = fit(
                &full,
                None,
                init,
                c,
                d,
                cand.l2,
                epochs,
                cfg,
                cfg.seed.wrapping_add(99),
            );
            (p, st_all, cand.l2, epochs, Some(cand.accuracy))
        }
        // Too little data to hold anything out: a short fixed fit from the imprint.
        (None, _) => {
            let epochs = 10;
            let (p, ..) = fit(
                &set,
                None,
                init,
                c,
                d,
                default_l2,
                epochs,
                cfg,
                cfg.seed.wrapping_add(99),
            );
            (p, st, default_l2, epochs, None)
        }
    };

    let counts: Vec<usize> = by_class(train.labels, c).iter().map(Vec::len).collect();
    let head = Head {
        classes,
        dim: d,
        mean: st.mean,
        inv_std: st.inv_std,
        weights: params.w,
        bias: params.b,
        threshold: cfg.threshold,
        backbone_sha256: backbone_sha256.to_string(),
        precision: precision.to_string(),
        info: TrainInfo {
            seed: cfg.seed,
            l2,
            epochs,
            samples_per_class: counts,
            holdout_accuracy,
            holdout_count: holdout.as_ref().map_or(0, |h| h.y.len()),
        },
    };
    let correct = (0..train.labels.len())
        .filter(|&i| head.predict(&train.data[i * d..(i + 1) * d]).best == train.labels[i])
        .count();
    let report = TrainReport {
        candidates,
        l2,
        epochs,
        holdout_accuracy,
        holdout_count: head.info.holdout_count,
        train_accuracy: correct as f32 / train.labels.len() as f32,
    };
    Ok((head, report))
}

/// A head from imprinting alone (no optimisation): usable the instant a class has one
/// example. Used by the daemon between a capture and the next fine-tune.
pub fn imprint_head(
    train: Examples,
    classes: Vec<String>,
    backbone_sha256: &str,
    precision: &str,
    threshold: f32,
) -> Result<Head, TrainError> {
    validate(&train, &classes)?;
    let (c, d) = (classes.len(), train.dim);
    let all: Vec<usize> = (0..train.labels.len()).collect();
    let st = stats(&normalised(&train, &all), d);
    let set = make_set(&train, &all, &st);
    let p = imprint(&set, c, d);
    Ok(Head {
        classes,
        dim: d,
        mean: st.mean,
        inv_std: st.inv_std,
        weights: p.w,
        bias: p.b,
        threshold,
        backbone_sha256: backbone_sha256.to_string(),
        precision: precision.to_string(),
        info: TrainInfo {
            samples_per_class: by_class(train.labels, c).iter().map(Vec::len).collect(),
            ..Default::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian blobs around random class centres in `d` dimensions.
    fn blobs(c: usize, n: usize, d: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut r = Rng::new(seed);
        let centres: Vec<Vec<f32>> = (0..c)
            .map(|_| (0..d).map(|_| r.normal()).collect())
            .collect();
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let k = i % c;
            x.extend(centres[k].iter().map(|m| m + spread * r.normal()));
            y.push(k);
        }
        (x, y)
    }

    fn names(c: usize) -> Vec<String> {
        (0..c).map(|k| format!("c{k}")).collect()
    }

    #[test]
    fn learns_separable_data_and_generalises() {
        let (x, y) = blobs(4, 400, 64, 0.8, 1);
        let (xt, yt) = blobs(4, 200, 64, 0.8, 1); // same centres (same seed), fresh noise below
        let _ = (xt, yt);
        let ex = Examples {
            dim: 64,
            data: &x,
            labels: &y,
        };
        let (head, rep) = train(ex, None, names(4), "h", "w8", &TrainConfig::default()).unwrap();
        assert!(rep.train_accuracy > 0.97, "{rep:?}");
        assert!(rep.holdout_accuracy.unwrap() > 0.95, "{rep:?}");
        assert_eq!(rep.candidates.len(), 3);
        assert_eq!(head.info.samples_per_class, vec![100; 4]);
    }

    #[test]
    fn same_seed_same_head_other_seed_other_head() {
        let (x, y) = blobs(3, 120, 16, 1.5, 2);
        let ex = Examples {
            dim: 16,
            data: &x,
            labels: &y,
        };
        let cfg = TrainConfig {
            seed: 5,
            ..Default::default()
        };
        let a = train(ex, None, names(3), "h", "w8", &cfg).unwrap().0;
        let b = train(ex, None, names(3), "h", "w8", &cfg).unwrap().0;
        assert_eq!(a, b);
        let cfg2 = TrainConfig {
            seed: 6,
            ..Default::default()
        };
        let c = train(ex, None, names(3), "h", "w8", &cfg2).unwrap().0;
        assert_ne!(a.weights, c.weights);
    }

    #[test]
    fn one_example_per_class_already_works_by_imprinting() {
        let (x, y) = blobs(3, 3, 32, 0.0, 3);
        let ex = Examples {
            dim: 32,
            data: &x,
            labels: &y,
        };
        let h = imprint_head(ex, names(3), "h", "w8", 0.5).unwrap();
        let (probe, py) = blobs(3, 30, 32, 0.3, 3);
        for (row, &label) in probe.chunks_exact(32).zip(&py) {
            assert_eq!(h.predict(row).best, label);
        }
        // And the full trainer copes with no held-out data at all.
        let (h2, rep) = train(ex, None, names(3), "h", "w8", &TrainConfig::default()).unwrap();
        assert!(rep.holdout_accuracy.is_none());
        for (row, &label) in probe.chunks_exact(32).zip(&py) {
            assert_eq!(h2.predict(row).best, label);
        }
    }

    #[test]
    fn class_balanced_sampling_keeps_the_minority_class() {
        // 300 of class 0, 6 of class 1: a plain sampler would learn "always 0".
        let (x0, _) = blobs(1, 300, 16, 1.0, 4);
        let mut r = Rng::new(9);
        let c1: Vec<f32> = (0..16).map(|_| r.normal() + 1.5).collect();
        let mut x = x0.clone();
        let mut y = vec![0usize; 300];
        for _ in 0..6 {
            x.extend(c1.iter().map(|m| m + 0.5 * r.normal()));
            y.push(1);
        }
        let ex = Examples {
            dim: 16,
            data: &x,
            labels: &y,
        };
        let (h, _) = train(ex, None, names(2), "h", "w8", &TrainConfig::default()).unwrap();
        let probe: Vec<f32> = c1.iter().map(|m| m + 0.3 * r.normal()).collect();
        assert_eq!(h.predict(&probe).best, 1);
    }

    #[test]
    fn l2_regularisation_shrinks_weights() {
        let (x, y) = blobs(2, 200, 32, 1.0, 5);
        let ex = Examples {
            dim: 32,
            data: &x,
            labels: &y,
        };
        let norm = |l2: f32| {
            let cfg = TrainConfig {
                l2_grid: vec![l2],
                holdout: 0.0,
                ..Default::default()
            };
            let h = train(ex, None, names(2), "h", "w8", &cfg).unwrap().0;
            h.weights.iter().map(|w| w * w).sum::<f32>()
        };
        assert!(
            norm(1.0) < 0.7 * norm(0.0),
            "{} vs {}",
            norm(1.0),
            norm(0.0)
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let ex = Examples {
            dim: 2,
            data: &[],
            labels: &[],
        };
        assert_eq!(
            train(ex, None, names(2), "h", "w8", &TrainConfig::default()).unwrap_err(),
            TrainError::NoData
        );
        let ex = Examples {
            dim: 2,
            data: &[1.0, 0.0],
            labels: &[0],
        };
        assert_eq!(
            train(ex, None, names(2), "h", "w8", &TrainConfig::default()).unwrap_err(),
            TrainError::EmptyClass("c1".into())
        );
    }
}
