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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{Head, TrainInfo, dot, l2_normalise, softmax};
use crate::backbone::BackboneId;
use crate::rng::Rng;

/// Training knobs. [`TrainConfig::default`] is what the CLI and the daemon use.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// RNG seed.
    pub seed: u64,
    /// L2 strengths to try.
    pub l2_grid: Vec<f32>,
    /// Fraction of each class held out per cross-validation fold (k ≈ 1/holdout folds) when
    /// no explicit validation set is given; 0 disables selection.
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
    /// Stop early (keeping the best so far) once this flag is set: how a shutting-down
    /// appliance ends a long fine-tune within an epoch, whatever the budget.
    pub stop: Option<Arc<AtomicBool>>,
}

impl TrainConfig {
    /// True once the deadline has passed or the stop flag is set.
    pub fn should_stop(&self) -> bool {
        self.deadline.is_some_and(|t| Instant::now() >= t)
            || self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            l2_grid: vec![1e-5, 1e-4, 1e-3, 1e-2],
            holdout: 0.2,
            max_epochs: 60,
            patience: 6,
            batch: 32,
            lr: 1e-2,
            threshold: 0.5,
            deadline: None,
            stop: None,
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
    /// An embedding holds NaN or an infinity (a damaged sample): nothing is trained on it.
    #[error("{set} example {row} has a non-finite value (NaN or infinity); remove or re-embed it")]
    NotFinite {
        /// `"training"` or `"validation"`.
        set: &'static str,
        /// Row of the example.
        row: usize,
    },
    /// The fit produced non-finite weights; no head is returned rather than a broken one.
    #[error("training diverged (non-finite weights); no head was made")]
    Diverged,
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
    /// A group per row, or `None` for a group per row: rows of one group (the frames of one
    /// press and the variations made from them) are held out together when training selects
    /// its settings, so a near-copy of a held-out row never sits in the training rows.
    pub groups: Option<&'a [u64]>,
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
    /// Held-out confusion of the selected candidate, `[true][predicted]`, summed over its
    /// folds (`None` when nothing was held out).
    pub holdout_confusion: Option<Vec<Vec<usize>>>,
    /// Held-out accuracy of the imprinted warm start on the same folds: what training had
    /// to beat (the appliance keeps an imprinted head when a fine-tune is worse than this).
    pub imprint_accuracy: Option<f32>,
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
    // The extra 1/sqrt(d) gives standardised vectors unit norm on average, so weights are
    // O(1) per class and one learning rate suits any embedding length.
    let unit = 1.0 / (d as f64).sqrt();
    let inv_std = var
        .iter()
        .map(|v| (unit / ((n as f64 * v + SHRINK * pooled) / (n as f64 + SHRINK)).sqrt()) as f32)
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
    // Logits of 10·cos(mean, z) for unit-norm features.
    let scale = 10.0;
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

/// `[true][predicted]` counts of `p` on `set`, row-major `c × c`.
fn confusion(p: &Params, set: &Set, c: usize, d: usize) -> Vec<usize> {
    let mut counts = vec![0usize; c * c];
    let mut logits = vec![0f32; c];
    for (row, &y) in set.z.chunks_exact(d).zip(&set.y) {
        for (k, l) in logits.iter_mut().enumerate() {
            *l = dot(&p.w[k * d..(k + 1) * d], row) + p.b[k];
        }
        counts[y * c + argmax(&logits)] += 1;
    }
    counts
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

/// What one fit works on: standardised training rows, an optional held-out set, sizes and
/// the configuration.
struct Problem<'a> {
    set: &'a Set,
    holdout: Option<&'a Set>,
    c: usize,
    d: usize,
    cfg: &'a TrainConfig,
}

/// Outcome of one fit: best parameters and, with a held-out set, the epoch, accuracy and loss
/// at which they were taken.
struct Fitted {
    params: Params,
    epoch: usize,
    accuracy: f32,
    loss: f32,
}

/// Adam state.
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
    prob: &Problem,
    by_class: &[Vec<usize>],
    l2: f32,
    rng: &mut Rng,
) {
    let (set, cfg, d) = (prob.set, prob.cfg, prob.d);
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
                crate::linalg::axpy(&mut gw[k * d..(k + 1) * d], g, row);
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
fn fit(prob: &Problem, init: Params, l2: f32, epochs: usize, seed: u64) -> Fitted {
    let (set, c, d, cfg) = (prob.set, prob.c, prob.d, prob.cfg);
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
    let score = |p: &Params| {
        prob.holdout
            .map_or((f32::NAN, f32::NAN), |h| evaluate(p, h, c, d))
    };
    let (loss, accuracy) = score(&p);
    let mut best = Fitted {
        params: p.clone(),
        epoch: 0,
        accuracy,
        loss,
    };
    for epoch in 1..=epochs {
        if cfg.should_stop() {
            break;
        }
        run_epoch(&mut p, &mut opt, prob, &groups, l2, &mut rng);
        if prob.holdout.is_none() {
            best.epoch = epoch;
            continue;
        }
        let (loss, accuracy) = score(&p);
        if loss < best.loss {
            best = Fitted {
                params: p.clone(),
                epoch,
                accuracy,
                loss,
            };
        } else if epoch - best.epoch >= cfg.patience {
            break;
        }
    }
    if prob.holdout.is_none() {
        best.params = p;
    }
    best
}

/// The groups of each class: per class, its rows gathered by group in order of first
/// appearance (each row its own group when `groups` is `None`).
fn class_groups(y: &[usize], groups: Option<&[u64]>, c: usize) -> Vec<Vec<Vec<usize>>> {
    let mut out: Vec<Vec<Vec<usize>>> = vec![Vec::new(); c];
    let mut seen: std::collections::HashMap<(usize, u64), usize> = Default::default();
    for (i, &l) in y.iter().enumerate() {
        match groups {
            None => out[l].push(vec![i]),
            Some(g) => {
                let n = out[l].len();
                let slot = *seen.entry((l, g[i])).or_insert(n);
                if slot == n {
                    out[l].push(Vec::new());
                }
                out[l][slot].push(i);
            }
        }
    }
    out
}

/// Stratified, grouped k-fold assignment: per class, its shuffled groups dealt round-robin
/// into `k` folds (a group's rows share a fold). Returns, per fold, (training rows, held-out
/// rows).
fn stratified_folds(
    y: &[usize],
    groups: Option<&[u64]>,
    c: usize,
    k: usize,
    rng: &mut Rng,
) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut fold_of = vec![0usize; y.len()];
    for mut gs in class_groups(y, groups, c) {
        rng.shuffle(&mut gs);
        for (j, g) in gs.into_iter().enumerate() {
            for i in g {
                fold_of[i] = j % k;
            }
        }
    }
    (0..k)
        .map(|f| {
            let (ho, tr): (Vec<usize>, Vec<usize>) = (0..y.len()).partition(|&i| fold_of[i] == f);
            (tr, ho)
        })
        .collect()
}

fn make_set(ex: &Examples, idx: &[usize], st: &Stats) -> Set {
    let mut z = normalised(ex, idx);
    standardise(&mut z, ex.dim, st);
    Set {
        z,
        y: idx.iter().map(|&i| ex.labels[i]).collect(),
    }
}

/// Standardisation statistics of all rows of `ex` and the standardised rows themselves.
fn whole(ex: &Examples) -> (Stats, Set) {
    let all: Vec<usize> = (0..ex.labels.len()).collect();
    let st = stats(&normalised(ex, &all), ex.dim);
    let set = make_set(ex, &all, &st);
    (st, set)
}

/// The first row of `ex` holding a non-finite value.
fn first_non_finite(ex: &Examples) -> Option<usize> {
    let d = ex.dim.max(1);
    ex.data.iter().position(|v| !v.is_finite()).map(|i| i / d)
}

fn validate(ex: &Examples, classes: &[String]) -> Result<(), TrainError> {
    if ex.labels.is_empty() {
        return Err(TrainError::NoData);
    }
    if ex.dim == 0 {
        return Err(TrainError::Shape("embeddings have no dimensions".into()));
    }
    if ex.data.len() != ex.labels.len() * ex.dim {
        return Err(TrainError::Shape(format!(
            "{} values for {} rows of {}",
            ex.data.len(),
            ex.labels.len(),
            ex.dim
        )));
    }
    if ex.groups.is_some_and(|g| g.len() != ex.labels.len()) {
        return Err(TrainError::Shape(format!(
            "{} groups for {} rows",
            ex.groups.map_or(0, <[u64]>::len),
            ex.labels.len()
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
    // Non-finite input would make every statistic NaN, and NaN compares false: the fit
    // would "succeed" with a head that answers nothing.
    if let Some(row) = first_non_finite(ex) {
        return Err(TrainError::NotFinite {
            set: "training",
            row,
        });
    }
    Ok(())
}

/// Number of cross-validation folds for a held-out fraction: each fold holds out about
/// `holdout` of every class's groups. `None` when there is too little data to hold anything
/// out.
fn fold_count(y: &[usize], groups: Option<&[u64]>, c: usize, holdout: f32) -> Option<usize> {
    if holdout <= 0.0 {
        return None;
    }
    let smallest = class_groups(y, groups, c)
        .iter()
        .map(Vec::len)
        .min()
        .unwrap_or(0);
    let k = ((1.0 / holdout).round() as usize)
        .clamp(2, 10)
        .min(smallest);
    (k >= 2).then_some(k)
}

/// A fold's fit with the standardisation it was made with.
struct FoldFit {
    fit: Fitted,
    stats: Stats,
    holdout: usize,
    /// Held-out confusion of the fit's parameters, row-major.
    confusion: Vec<usize>,
    /// Held-out accuracy of the imprint the fit started from.
    start_accuracy: f32,
}

/// One model-selection fit: an L2 strength on one fold.
struct Task<'a> {
    l2: f32,
    train_rows: &'a [usize],
    /// Held-out rows of `train`, or `None` for the explicit validation set.
    holdout_rows: Option<&'a [usize]>,
    seed: u64,
}

/// Train a head.
///
/// Without `val`, the L2 strength and epoch count are chosen by stratified k-fold
/// cross-validation (k ≈ 1/`cfg.holdout`), each fold early-stopped on its held-out rows, and
/// the head is then refitted on all of `train`. With `val`, each strength is early-stopped on
/// `val` and the best early-stopped head is returned as is.
pub fn train(
    train: Examples,
    val: Option<Examples>,
    classes: Vec<String>,
    backbone: &BackboneId,
    cfg: &TrainConfig,
) -> Result<(Head, TrainReport), TrainError> {
    validate(&train, &classes)?;
    if let Some(v) = &val {
        if v.dim != train.dim || v.data.len() != v.labels.len() * v.dim {
            return Err(TrainError::Shape(
                "validation set does not match the training set".into(),
            ));
        }
        if v.labels.iter().any(|&l| l >= classes.len()) {
            return Err(TrainError::Shape("validation label out of range".into()));
        }
        if let Some(row) = first_non_finite(v) {
            return Err(TrainError::NotFinite {
                set: "validation",
                row,
            });
        }
    }
    let (c, d) = (classes.len(), train.dim);
    let mut rng = Rng::new(cfg.seed);
    let all: Vec<usize> = (0..train.labels.len()).collect();
    let val = val.filter(|v| !v.labels.is_empty());
    let folds: Vec<(Vec<usize>, Option<Vec<usize>>)> =
        match (&val, fold_count(train.labels, train.groups, c, cfg.holdout)) {
            (Some(_), _) => vec![(all.clone(), None)],
            (None, Some(k)) => stratified_folds(train.labels, train.groups, c, k, &mut rng)
                .into_iter()
                .map(|(tr, ho)| (tr, Some(ho)))
                .collect(),
            (None, None) => Vec::new(),
        };
    let tasks: Vec<Task> = cfg
        .l2_grid
        .iter()
        .enumerate()
        .flat_map(|(g, &l2)| {
            folds.iter().enumerate().map(move |(f, (tr, ho))| Task {
                l2,
                train_rows: tr,
                holdout_rows: ho.as_deref(),
                seed: cfg.seed.wrapping_add(1 + (g * 64 + f) as u64),
            })
        })
        .collect();

    // Run every (strength, fold) fit on a small pool of threads. Each task has its own
    // seed, so the outcome does not depend on which thread runs it.
    let run_task = |t: &Task| {
        let st = stats(&normalised(&train, t.train_rows), d);
        let set = make_set(&train, t.train_rows, &st);
        let ho = match (t.holdout_rows, &val) {
            (Some(rows), _) => make_set(&train, rows, &st),
            (None, Some(v)) => make_set(v, &(0..v.labels.len()).collect::<Vec<_>>(), &st),
            (None, None) => unreachable!("tasks exist only with a held-out set"),
        };
        let init = imprint(&set, c, d);
        let start_accuracy = evaluate(&init, &ho, c, d).1;
        let prob = Problem {
            set: &set,
            holdout: Some(&ho),
            c,
            d,
            cfg,
        };
        let fitted = fit(&prob, init, t.l2, cfg.max_epochs, t.seed);
        FoldFit {
            start_accuracy,
            confusion: confusion(&fitted.params, &ho, c, d),
            fit: fitted,
            stats: st,
            holdout: ho.y.len(),
        }
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(tasks.len())
        .max(1);
    let mut outcomes: Vec<Option<FoldFit>> = Vec::new();
    outcomes.resize_with(tasks.len(), || None);
    let done: Vec<Vec<(usize, FoldFit)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(t) = tasks.get(i) else { break };
                        mine.push((i, run_task(t)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for (i, r) in done.into_iter().flatten() {
        outcomes[i] = Some(r);
    }

    // Aggregate per strength: mean held-out accuracy and loss, median best epoch.
    let nf = folds.len().max(1);
    let candidates: Vec<Candidate> = cfg
        .l2_grid
        .iter()
        .enumerate()
        .filter(|_| !folds.is_empty())
        .map(|(g, &l2)| {
            let rs: Vec<_> = outcomes[g * nf..(g + 1) * nf].iter().flatten().collect();
            // Pooled over folds (folds differ in size by up to one row per class).
            let n = rs.iter().map(|r| r.holdout).sum::<usize>().max(1) as f32;
            let mut epochs: Vec<usize> = rs.iter().map(|r| r.fit.epoch).collect();
            epochs.sort_unstable();
            Candidate {
                l2,
                epochs: epochs.get(epochs.len() / 2).copied().unwrap_or(1),
                accuracy: rs
                    .iter()
                    .map(|r| r.fit.accuracy * r.holdout as f32)
                    .sum::<f32>()
                    / n,
                loss: rs
                    .iter()
                    .map(|r| r.fit.loss * r.holdout as f32)
                    .sum::<f32>()
                    / n,
            }
        })
        .collect();
    let chosen = candidates
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| {
            a.accuracy
                .total_cmp(&b.accuracy)
                .then(b.loss.total_cmp(&a.loss))
        })
        .map(|(i, _)| i);
    let holdout_count = outcomes
        .iter()
        .take(nf)
        .flatten()
        .map(|r| r.holdout)
        .sum::<usize>();
    let holdout_confusion = chosen.map(|i| {
        let mut sum = vec![0usize; c * c];
        for f in outcomes[i * nf..(i + 1) * nf].iter().flatten() {
            sum.iter_mut().zip(&f.confusion).for_each(|(s, n)| *s += n);
        }
        sum.chunks(c.max(1)).map(<[usize]>::to_vec).collect()
    });
    let imprint_accuracy = chosen.map(|i| {
        let rs: Vec<&FoldFit> = outcomes[i * nf..(i + 1) * nf].iter().flatten().collect();
        let n = rs.iter().map(|r| r.holdout).sum::<usize>().max(1) as f32;
        rs.iter()
            .map(|r| r.start_accuracy * r.holdout as f32)
            .sum::<f32>()
            / n
    });
    let default_l2 = cfg
        .l2_grid
        .get(cfg.l2_grid.len() / 2)
        .copied()
        .unwrap_or(1e-3);

    let (params, st, l2, epochs, holdout_accuracy) = match (chosen, &val) {
        // Explicit validation set: keep the early-stopped head of the chosen strength.
        (Some(i), Some(_)) => {
            let cand = candidates[i].clone();
            let ff = outcomes[i * nf]
                .take()
                .ok_or_else(|| TrainError::Shape("a training thread failed".into()))?;
            (
                ff.fit.params,
                ff.stats,
                cand.l2,
                cand.epochs,
                Some(cand.accuracy),
            )
        }
        // Cross-validated: refit on everything with the chosen strength and epoch count.
        (Some(i), None) => {
            let cand = candidates[i].clone();
            let (st, full) = whole(&train);
            let init = imprint(&full, c, d);
            let epochs = cand.epochs.max(1);
            let prob = Problem {
                set: &full,
                holdout: None,
                c,
                d,
                cfg,
            };
            let p = fit(&prob, init, cand.l2, epochs, cfg.seed.wrapping_add(99)).params;
            (p, st, cand.l2, epochs, Some(cand.accuracy))
        }
        // Too little data to hold anything out: a short fixed fit from the imprint.
        (None, _) => {
            let epochs = 10;
            let (st, full) = whole(&train);
            let init = imprint(&full, c, d);
            let prob = Problem {
                set: &full,
                holdout: None,
                c,
                d,
                cfg,
            };
            let p = fit(&prob, init, default_l2, epochs, cfg.seed.wrapping_add(99)).params;
            (p, st, default_l2, epochs, None)
        }
    };

    if !params.w.iter().chain(&params.b).all(|v| v.is_finite()) {
        return Err(TrainError::Diverged);
    }
    // An accuracy is reported only when it was measured on finite numbers.
    let holdout_accuracy = holdout_accuracy.filter(|a| a.is_finite());
    let counts: Vec<usize> = by_class(train.labels, c).iter().map(Vec::len).collect();
    let head = Head {
        classes,
        dim: d,
        mean: st.mean,
        inv_std: st.inv_std,
        weights: params.w,
        bias: params.b,
        threshold: cfg.threshold,
        backbone: backbone.clone(),
        info: TrainInfo {
            seed: cfg.seed,
            l2,
            epochs,
            samples_per_class: counts,
            holdout_accuracy,
            holdout_count,
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
        holdout_count,
        holdout_confusion,
        imprint_accuracy,
        train_accuracy: correct as f32 / train.labels.len() as f32,
    };
    Ok((head, report))
}

/// A head from imprinting alone (no optimisation): usable the instant a class has one
/// example. Used by the daemon between a capture and the next fine-tune.
pub fn imprint_head(
    train: Examples,
    classes: Vec<String>,
    backbone: &BackboneId,
    threshold: f32,
) -> Result<Head, TrainError> {
    validate(&train, &classes)?;
    let (c, d) = (classes.len(), train.dim);
    let (st, set) = whole(&train);
    let p = imprint(&set, c, d);
    Ok(Head {
        classes,
        dim: d,
        mean: st.mean,
        inv_std: st.inv_std,
        weights: p.w,
        bias: p.b,
        threshold,
        backbone: backbone.clone(),
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

    fn bid() -> BackboneId {
        BackboneId {
            digest: "h".into(),
            precision: "w8".into(),
            input_size: None,
            kind: None,
        }
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
            groups: None,
        };
        let (head, rep) = train(ex, None, names(4), &bid(), &TrainConfig::default()).unwrap();
        assert!(rep.train_accuracy > 0.97, "{rep:?}");
        assert!(rep.holdout_accuracy.unwrap() > 0.95, "{rep:?}");
        assert_eq!(rep.candidates.len(), TrainConfig::default().l2_grid.len());
        // The held-out confusion covers every held-out row once and agrees with the accuracy.
        let m = rep.holdout_confusion.as_ref().unwrap();
        let total: usize = m.iter().flatten().sum();
        let diag: usize = (0..4).map(|k| m[k][k]).sum();
        assert_eq!((m.len(), total), (4, rep.holdout_count));
        let acc = diag as f32 / total as f32;
        assert!(
            (acc - rep.holdout_accuracy.unwrap()).abs() < 1e-4,
            "{acc} {rep:?}"
        );
        // The imprinted start is measured on the same folds (well above chance here).
        let start = rep.imprint_accuracy.unwrap();
        assert!(start > 0.5 && start <= 1.0, "{rep:?}");
        assert_eq!(head.info.samples_per_class, vec![100; 4]);
    }

    #[test]
    fn same_seed_same_head_other_seed_other_head() {
        let (x, y) = blobs(3, 120, 16, 1.5, 2);
        let ex = Examples {
            dim: 16,
            data: &x,
            labels: &y,
            groups: None,
        };
        let cfg = TrainConfig {
            seed: 5,
            ..Default::default()
        };
        let a = train(ex, None, names(3), &bid(), &cfg).unwrap().0;
        let b = train(ex, None, names(3), &bid(), &cfg).unwrap().0;
        assert_eq!(a, b);
        let cfg2 = TrainConfig {
            seed: 6,
            ..Default::default()
        };
        let c = train(ex, None, names(3), &bid(), &cfg2).unwrap().0;
        assert_ne!(a.weights, c.weights);
    }

    #[test]
    fn one_example_per_class_already_works_by_imprinting() {
        let (x, y) = blobs(3, 3, 32, 0.0, 3);
        let ex = Examples {
            dim: 32,
            data: &x,
            labels: &y,
            groups: None,
        };
        let h = imprint_head(ex, names(3), &bid(), 0.5).unwrap();
        let (probe, py) = blobs(3, 30, 32, 0.3, 3);
        for (row, &label) in probe.chunks_exact(32).zip(&py) {
            assert_eq!(h.predict(row).best, label);
        }
        // And the full trainer copes with no held-out data at all.
        let (h2, rep) = train(ex, None, names(3), &bid(), &TrainConfig::default()).unwrap();
        assert!(rep.holdout_accuracy.is_none() && rep.holdout_confusion.is_none());
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
        }
        y.extend([1; 6]);
        let ex = Examples {
            dim: 16,
            data: &x,
            labels: &y,
            groups: None,
        };
        let (h, _) = train(ex, None, names(2), &bid(), &TrainConfig::default()).unwrap();
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
            groups: None,
        };
        let norm = |l2: f32| {
            let cfg = TrainConfig {
                l2_grid: vec![l2],
                holdout: 0.0,
                ..Default::default()
            };
            let h = train(ex, None, names(2), &bid(), &cfg).unwrap().0;
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
            groups: None,
        };
        assert_eq!(
            train(ex, None, names(2), &bid(), &TrainConfig::default()).unwrap_err(),
            TrainError::NoData
        );
        let ex = Examples {
            dim: 2,
            data: &[1.0, 0.0],
            labels: &[0],
            groups: None,
        };
        assert_eq!(
            train(ex, None, names(2), &bid(), &TrainConfig::default()).unwrap_err(),
            TrainError::EmptyClass("c1".into())
        );
        let ex = Examples {
            dim: 0,
            data: &[],
            labels: &[0],
            groups: None,
        };
        assert!(matches!(
            train(ex, None, names(1), &bid(), &TrainConfig::default()),
            Err(TrainError::Shape(_))
        ));
    }

    #[test]
    fn non_finite_embeddings_are_refused_never_trained_on() {
        let (mut x, y) = blobs(2, 40, 8, 0.3, 5);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            x[8 * 17 + 3] = bad;
            let ex = Examples {
                dim: 8,
                data: &x,
                labels: &y,
                groups: None,
            };
            let e = train(ex, None, names(2), &bid(), &TrainConfig::default()).unwrap_err();
            assert_eq!(
                e,
                TrainError::NotFinite {
                    set: "training",
                    row: 17
                }
            );
            assert!(e.to_string().contains("example 17"), "{e}");
            assert!(imprint_head(ex, names(2), &bid(), 0.5).is_err());
        }
        // A NaN in the validation set is refused too, instead of scoring 1.000 on it.
        x[8 * 17 + 3] = 0.5;
        let ex = Examples {
            dim: 8,
            data: &x,
            labels: &y,
            groups: None,
        };
        let mut v = x.clone();
        v[0] = f32::NAN;
        let val = Examples {
            dim: 8,
            data: &v,
            labels: &y,
            groups: None,
        };
        assert_eq!(
            train(ex, Some(val), names(2), &bid(), &TrainConfig::default()).unwrap_err(),
            TrainError::NotFinite {
                set: "validation",
                row: 0
            }
        );
        let (_, r) = train(ex, None, names(2), &bid(), &TrainConfig::default()).unwrap();
        assert!(r.holdout_accuracy.is_some_and(f32::is_finite));
    }

    #[test]
    fn grouped_folds_hold_a_group_out_whole_and_count_groups_not_rows() {
        // Two classes, each 4 presses of 3 frames: rows of a press must share a fold.
        let y: Vec<usize> = (0..24).map(|i| i / 12).collect();
        let g: Vec<u64> = (0..24).map(|i| (i / 3) as u64).collect();
        let k = fold_count(&y, Some(&g), 2, 0.2).unwrap();
        assert_eq!(k, 4, "4 groups per class, not 12 rows");
        assert_eq!(fold_count(&y, None, 2, 0.2), Some(5));
        let folds = stratified_folds(&y, Some(&g), 2, k, &mut Rng::new(3));
        let mut held = [0; 24];
        for (tr, ho) in &folds {
            assert_eq!(tr.len() + ho.len(), 24);
            for &i in ho {
                held[i] += 1;
                // Every row of the group is held out with it, none left in training.
                assert!(ho.contains(&(i / 3 * 3)) && ho.contains(&(i / 3 * 3 + 2)));
                assert!(!tr.iter().any(|&t| g[t] == g[i]));
            }
            // Stratified: each fold holds out one press of each class.
            assert_eq!(ho.iter().filter(|&&i| y[i] == 0).count(), 3);
        }
        assert!(
            held.iter().all(|&n| n == 1),
            "each row held out exactly once"
        );
        // Without groups the folds are the ungrouped ones, as before groups existed.
        let plain = stratified_folds(&y, None, 2, 4, &mut Rng::new(3));
        assert!(
            plain
                .iter()
                .any(|(_, ho)| ho.iter().any(|&i| !ho.contains(&(i / 3 * 3))))
        );
        // A group list of the wrong length is refused.
        let ex = Examples {
            dim: 1,
            data: &[0.0; 24],
            labels: &y,
            groups: Some(&g[..5]),
        };
        assert!(matches!(
            validate(&ex, &["a".into(), "b".into()]),
            Err(TrainError::Shape(_))
        ));
    }
}
