//! `teachcam bench`: time decoding, preprocessing, the backbone (alone and on several threads
//! at once), the head and training on this machine, with an optional per-operator profile.
//! Measurements only: nothing is written. Must not: assert speeds (numbers are reported).

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::load_backbone;
use crate::backbone::Backbone;
use crate::cli::{BenchArgs, Global};
use crate::head::train::{Examples, TrainConfig, train};
use crate::metrics;

fn time_ms(runs: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn synthetic_embeddings(classes: usize, n: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    // Non-negative, sparse-ish vectors around class prototypes, like pooled ReLU6 features.
    let mut r = crate::rng::Rng::new(seed);
    let protos: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..dim).map(|_| (r.normal() * 0.8).max(0.0)).collect())
        .collect();
    let mut x = Vec::with_capacity(n * dim);
    let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
    for &k in &y {
        x.extend(
            protos[k]
                .iter()
                .map(|m| (m + 0.6 * r.normal()).clamp(0.0, 6.0)),
        );
    }
    (x, y)
}

/// `threads` backbones running `runs` inferences each at the same time: aggregate
/// inferences per second, and the median and p95 latency of one inference under that load.
fn parallel_backbone(
    backbone: &Backbone,
    input: &[f32],
    threads: usize,
    runs: usize,
) -> Result<(f64, f64, f64)> {
    let start = Instant::now();
    let per_thread: Vec<Result<Vec<f64>, crate::backbone::ModelError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut times = Vec::with_capacity(runs);
                    for _ in 0..runs {
                        let t = Instant::now();
                        backbone.run_tensor(input)?;
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in per_thread {
        all.extend(r?);
    }
    let (m, p) = metrics::median_p95(&all);
    Ok(((threads * runs) as f64 / wall, m, p))
}

/// One frame split over each of `counts` threads (a backbone per count, sharing the plan),
/// the counts taking turns frame by frame on the same input (so a slower or busier moment of
/// the machine falls on every count alike): per count the median ms, the speed-up over the
/// first count, and whether every count gave the first count's embedding bit for bit.
fn thread_sweep(
    backbone: &Backbone,
    input: &[f32],
    counts: &[usize],
    runs: usize,
) -> Result<Vec<serde_json::Value>> {
    let mut bbs = Vec::new();
    for &n in counts {
        let mut b = backbone.clone();
        b.set_threads(n).map_err(anyhow::Error::msg)?;
        // Warm the pool and check the result.
        let e = b.run_tensor(input)?;
        bbs.push((b, e, Vec::new()));
    }
    for _ in 0..runs {
        for (b, _, times) in bbs.iter_mut() {
            let t = Instant::now();
            b.run_tensor(input)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let base = metrics::median_p95(&bbs[0].2).0;
    let first = bbs[0].1.clone();
    Ok(bbs
        .iter()
        .map(|(b, e, times)| {
            let m = metrics::median_p95(times).0;
            json!({"threads": b.threads(), "ms_median": m, "speedup": base / m,
                   "identical": e.iter().zip(&first).all(|(x, y)| x.to_bits() == y.to_bits())})
        })
        .collect())
}

/// Run `teachcam bench` (`--runs` and `--concurrent` are range-checked by clap).
pub fn cmd_bench(g: &Global, a: &BenchArgs) -> Result<()> {
    let (runs, warmup, json_out, profile) = (a.runs as usize, a.warmup, a.json, a.profile);
    let threads = a.concurrent as usize;
    let t = Instant::now();
    let backbone = load_backbone(g)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let (w, h) = (640, 480);
    let frame = crate::demo::render(0, w, h, &mut crate::rng::Rng::new(1));
    let jpeg = crate::frame::encode_jpeg(
        &image::RgbImage::from_raw(w as u32, h as u32, frame.clone()).context("frame size")?,
    )?;
    let decode = time_ms(runs, || {
        let _ = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg);
    });
    let size = backbone.input_size();
    let plan = crate::preprocess::Plan::new(w, h, size);
    let mut input = vec![0f32; 3 * size * size];
    let pre = time_ms(runs, || plan.run(&frame, &mut input));
    for _ in 0..warmup {
        backbone.run_tensor(&input)?;
    }
    let mut last = Vec::new();
    let mut err = None;
    let bb = time_ms(runs, || match backbone.run_tensor(&input) {
        Ok(v) => last = v,
        Err(e) => err = Some(e),
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    // Per-frame overhead: the appliance's `Embedder` keeps tract's run state and its input
    // tensor between frames; `run_tensor` (timed above) builds both on every call. The two,
    // alternated in 5 rounds on the same input.
    let mut emb = backbone.embedder();
    emb.preprocess(&frame, w, h);
    let (mut kept, mut rebuilt) = (Vec::new(), Vec::new());
    let mut err = None;
    for _ in 0..5 {
        kept.extend(time_ms(runs.div_ceil(5), || {
            if let Err(e) = emb.run() {
                err = Some(e);
            }
        }));
        rebuilt.extend(time_ms(runs.div_ceil(5), || {
            if let Err(e) = backbone.run_tensor(&input) {
                err = Some(e);
            }
        }));
    }
    if let Some(e) = err {
        return Err(e.into());
    }
    let (km, rm) = (
        metrics::median_p95(&kept).0,
        metrics::median_p95(&rebuilt).0,
    );
    // Heads: 2 classes × 2000 examples, and 37 classes × 296 examples (the pets set's shape).
    let dim = backbone.dim();
    let mut train_ms = Vec::new();
    let mut head_us = Vec::new();
    for (classes, n) in [(2usize, 2000usize), (37, 296)] {
        let (x, y) = synthetic_embeddings(classes, n, dim, 7);
        let names: Vec<String> = (0..classes).map(|k| format!("c{k}")).collect();
        let t = Instant::now();
        let (head, _) = train(
            Examples {
                dim,
                data: &x,
                labels: &y,
                groups: None,
            },
            None,
            names,
            backbone.id(),
            &TrainConfig::default(),
        )?;
        train_ms.push((classes, n, t.elapsed().as_secs_f64() * 1e3));
        let p = time_ms(runs * 10, || {
            let _ = head.predict(&last);
        });
        head_us.push((classes, metrics::median_p95(&p).0 * 1e3));
    }
    let prof = if profile {
        backbone.profile(&input, runs)?
    } else {
        Vec::new()
    };
    let par = if threads > 1 {
        Some(parallel_backbone(&backbone, &input, threads, runs)?)
    } else {
        None
    };
    let (dm, dp) = metrics::median_p95(&decode);
    let (pm, pp) = metrics::median_p95(&pre);
    let (bm, bp) = metrics::median_p95(&bb);
    let mut v = json!({
        "precision": g.precision().name(),
        "model_path": backbone.path().to_string_lossy(),
        "backbone": g.backbone().name(),
        "threads": backbone.threads(),
        "runs": runs,
        "load_ms": load_ms,
        "decode_jpeg_640x480_ms_median": dm, "decode_jpeg_640x480_ms_p95": dp,
        "preprocess_640x480_ms_median": pm, "preprocess_640x480_ms_p95": pp,
        "backbone_ms_median": bm, "backbone_ms_p95": bp,
        "backbone_state_kept_ms_median": km, "backbone_state_rebuilt_ms_median": rm,
        "head_predict_us_median": head_us.iter().map(|(c, u)| json!({"classes": c, "us": u})).collect::<Vec<_>>(),
        "train_ms": train_ms.iter().map(|(c, n, ms)| json!({"classes": c, "examples": n, "ms": ms})).collect::<Vec<_>>(),
    });
    if let Some((tput, m, p)) = par {
        v["parallel"] = json!({"concurrent": threads, "inferences_per_s": tput,
            "latency_ms_median": m, "latency_ms_p95": p});
    }
    let counts: Vec<usize> = a.thread_counts.iter().map(|&n| n as usize).collect();
    if !counts.is_empty() {
        v["thread_counts"] = json!(thread_sweep(&backbone, &input, &counts, runs)?);
    }
    if profile {
        v["profile"] = serde_json::to_value(&prof)?;
    }
    if json_out {
        out!("{v}");
    } else {
        out!(
            "{} {} ({}), {} thread(s) a frame, {runs} runs",
            g.backbone(),
            g.precision(),
            backbone.path().display(),
            backbone.threads()
        );
        out!("  model load + optimise  {load_ms:8.1} ms");
        out!("  decode 640x480 JPEG    {dm:8.2} ms median  {dp:8.2} ms p95");
        out!("  preprocess 640x480     {pm:8.2} ms median  {pp:8.2} ms p95");
        out!("  backbone               {bm:8.2} ms median  {bp:8.2} ms p95");
        out!(
            "  backbone, alternated:  {km:8.3} ms median with the run state kept (Embedder), {rm:.3} ms rebuilt per call"
        );
        for (c, us) in &head_us {
            out!("  head predict {c:2} classes {us:8.1} us median");
        }
        for (c, n, ms) in &train_ms {
            out!("  train head {c:2} classes x {n} examples {ms:8.0} ms");
        }
        if let Some((tput, m, p)) = par {
            out!(
                "  {threads} backbones at once: {tput:.1} inferences/s, {m:.2} ms median, {p:.2} ms p95 each"
            );
        }
        for t in v["thread_counts"].as_array().into_iter().flatten() {
            out!(
                "  one frame on {} thread(s), alternated: {:.3} ms median, {:.2}x, identical: {}",
                t["threads"],
                t["ms_median"].as_f64().unwrap_or(0.0),
                t["speedup"].as_f64().unwrap_or(0.0),
                t["identical"]
            );
        }
        if profile {
            let total: f64 = prof.iter().map(|p| p.ms).sum();
            out!("per-operator profile (median of {runs} runs, sum of nodes):");
            out!(
                "  {:<28} {:>5} {:>9} {:>6} {:>9}",
                "operator",
                "nodes",
                "ms",
                "share",
                "Mmacs"
            );
            for p in &prof {
                out!(
                    "  {:<28} {:>5} {:>9.3} {:>5.1}% {:>9.1}",
                    p.op,
                    p.nodes,
                    p.ms,
                    100.0 * p.ms / total.max(1e-9),
                    p.mmacs
                );
            }
        }
    }
    Ok(())
}
