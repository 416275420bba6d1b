//! The composition root: turns parsed command lines into work, wiring the backbone, image
//! folders, caches, heads and the appliance together. The only module that prints command
//! results; the only place (with `main`) that uses `anyhow`. Errors returned from here are
//! shown as one line and exit with code 2. `bench` lives in [`bench`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::backbone::{self, Backbone, BackboneId, Precision, Spec};
use crate::cli::{
    ClassifyArgs, Cli, Command, DatasetAction, DoctorArgs, EmbedArgs, EvalArgs, Global, RunArgs,
    RunCmd, SynthArgs, TrainArgs,
};
use crate::config::{ConfigFile, Overrides, RunConfig};
use crate::embcache::{CachedItem, EmbeddingSet};
use crate::head::Head;
use crate::head::train::{Examples, TrainConfig, train};
use crate::imagefolder::{self, Split};
use crate::metrics;

/// `println!` that returns an error instead of panicking when stdout is closed (for example
/// `teachcam eval ... | head -1`); `main` turns a broken pipe into a quiet exit.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

/// `print!` counterpart of [`out!`].
macro_rules! out_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)?;
    }};
}

mod bench;
mod fewshot;
// `explain`, `features`, `dream`, `attack`: their glue.
mod inspect_cmds;

/// Version of tract this build is pinned to (Cargo.toml pins `=0.23.9`).
pub const TRACT_VERSION: &str = "0.23.9";

/// Run one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Embed(a) => cmd_embed(g, a),
        Command::Train(a) => cmd_train(g, a),
        Command::Eval(a) => cmd_eval(g, a),
        Command::Classify(a) => cmd_classify(g, a),
        Command::Bench(a) => bench::cmd_bench(g, a),
        Command::Fewshot(a) => fewshot::cmd_fewshot(g, a),
        Command::Info(a) => cmd_info(g, a.json),
        Command::Run(a) => cmd_run(g, a),
        Command::Doctor(a) => cmd_doctor(g, a),
        Command::Dataset { action } => cmd_dataset(g, action),
        Command::Explain(a) => inspect_cmds::explain(g, a),
        Command::Features(a) => inspect_cmds::features(g, a),
        Command::Dream(a) => inspect_cmds::dream(g, a),
        Command::Attack(a) => inspect_cmds::attack(g, a),
        Command::Synth(a) => cmd_synth(a),
    }
}

fn cmd_synth(a: &SynthArgs) -> Result<()> {
    let n = crate::demo::write_dataset(&a.out, a.train as usize, a.val as usize, a.seed)
        .with_context(|| format!("cannot write synthetic dataset to {}", a.out.display()))?;
    out!("wrote {n} images to {}", a.out.display());
    Ok(())
}

fn load_backbone(g: &Global) -> Result<Backbone> {
    load_backbone_from(g.models.as_deref(), g.spec(), false)
}

/// Find, verify and load the backbone, logging how long it took; `with_map`: its plan also
/// returns the last feature map ([`Backbone::load_with_map`]).
fn load_backbone_from(models: Option<&Path>, spec: Spec, with_map: bool) -> Result<Backbone> {
    let dir = backbone::find_models_dir(models)?;
    let t = Instant::now();
    let b = if with_map {
        Backbone::load_with_map(&dir, spec)?
    } else {
        Backbone::load(&dir, spec)?
    };
    log::info!(
        "loaded {} ({} {}{}) in {:.0} ms",
        b.path().display(),
        spec.kind,
        spec.precision,
        if with_map {
            ", with its feature map"
        } else {
            ""
        },
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(b)
}

fn jobs_or_default(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(len as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Embed `paths` on `jobs` threads; `None` for images that could not be decoded (reported).
fn embed_paths(backbone: &Backbone, paths: &[PathBuf], jobs: usize) -> Vec<Option<Vec<f32>>> {
    let results: Mutex<Vec<Option<Vec<f32>>>> = Mutex::new(vec![None; paths.len()]);
    let next = AtomicUsize::new(0);
    let pb = progress(paths.len(), "embedding");
    std::thread::scope(|s| {
        for _ in 0..jobs.min(paths.len().max(1)) {
            s.spawn(|| {
                let mut emb = backbone.embedder();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let r = imagefolder::load_rgb(path)
                        .map_err(|e| e.to_string())
                        .and_then(|img| {
                            emb.embed(&img.rgb, img.width, img.height)
                                .map_err(|e| e.to_string())
                        });
                    match r {
                        Ok(v) => {
                            if let Ok(mut guard) = results.lock() {
                                guard[i] = Some(v);
                            }
                        }
                        Err(e) => pb.suspend(|| log::warn!("skipping {}: {e}", path.display())),
                    }
                    pb.inc(1);
                }
            });
        }
    });
    pb.finish_and_clear();
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Embed a scanned folder; corrupt images are skipped and counted.
fn embed_folder(
    backbone: &Backbone,
    folder: &imagefolder::ImageFolder,
    split: Option<&str>,
    jobs: usize,
    set: &mut EmbeddingSet,
) -> usize {
    let paths: Vec<PathBuf> = folder.items.iter().map(|i| i.path.clone()).collect();
    let embs = embed_paths(backbone, &paths, jobs);
    let mut skipped = 0;
    for (item, e) in folder.items.iter().zip(embs) {
        let Some(e) = e else {
            skipped += 1;
            continue;
        };
        let label = set
            .classes
            .iter()
            .position(|c| *c == folder.classes[item.label]);
        let label = match label {
            Some(l) => l,
            None => {
                set.classes.push(folder.classes[item.label].clone());
                set.classes.len() - 1
            }
        };
        set.items.push(CachedItem {
            path: item.path.display().to_string(),
            label,
            split: split.map(str::to_string),
        });
        set.data.extend_from_slice(&e);
    }
    skipped
}

fn empty_set(backbone: &Backbone) -> EmbeddingSet {
    EmbeddingSet {
        dim: backbone.dim(),
        backbone: backbone.id().clone(),
        classes: Vec::new(),
        items: Vec::new(),
        data: Vec::new(),
    }
}

fn is_cache(path: &Path) -> bool {
    path.is_file()
}

fn report_skipped(skipped: usize, total: usize) {
    if skipped > 0 {
        log::warn!("{skipped} of {total} images could not be read and were skipped");
    }
}

/// Embeddings for `split` of `path`: from a cache file, or by embedding an image folder.
fn examples_for(
    g: &Global,
    path: &Path,
    split: Split,
    backbone: &mut Option<Backbone>,
    jobs: Option<usize>,
) -> Result<EmbeddingSet> {
    if is_cache(path) {
        let set = EmbeddingSet::load(path)?.select_split(split.dir_name());
        if set.items.is_empty() {
            bail!(
                "cache {} has no {} examples; embed a dataset with a {}/ folder",
                path.display(),
                split.dir_name(),
                split.dir_name()
            );
        }
        return Ok(set);
    }
    let folder = imagefolder::scan(&imagefolder::split_dir(path, split)?)?;
    if backbone.is_none() {
        *backbone = Some(load_backbone(g)?);
    }
    let b = backbone.as_ref().context("backbone")?;
    let mut set = empty_set(b);
    set.classes = folder.classes.clone();
    let skipped = embed_folder(b, &folder, None, jobs_or_default(jobs), &mut set);
    report_skipped(skipped, folder.items.len());
    Ok(set)
}

fn cmd_embed(g: &Global, a: &EmbedArgs) -> Result<()> {
    let (dataset, out, jobs) = (a.dataset.as_path(), a.out.as_path(), a.jobs);
    let split_layout = imagefolder::has_splits(dataset);
    let folders: Vec<(Option<&str>, PathBuf)> = if split_layout {
        ["train", "val"]
            .into_iter()
            .filter(|s| dataset.join(s).is_dir())
            .map(|s| (Some(s), dataset.join(s)))
            .collect()
    } else {
        vec![(None, dataset.to_path_buf())]
    };
    let scanned = folders
        .iter()
        .map(|(s, d)| imagefolder::scan(d).map(|f| (*s, f)))
        .collect::<Result<Vec<_>, _>>()?;
    let backbone = load_backbone(g)?;
    let mut set = empty_set(&backbone);
    // Class order: sorted union over splits, so labels agree between train and val.
    let mut classes: Vec<String> = scanned
        .iter()
        .flat_map(|(_, f)| f.classes.clone())
        .collect();
    classes.sort();
    classes.dedup();
    set.classes = classes;
    let t = Instant::now();
    let (mut skipped, mut total) = (0, 0);
    for (split, folder) in &scanned {
        total += folder.items.len();
        skipped += embed_folder(&backbone, folder, *split, jobs_or_default(jobs), &mut set);
    }
    report_skipped(skipped, total);
    if set.items.is_empty() {
        bail!(
            "no image in {} could be read; nothing written",
            dataset.display()
        );
    }
    set.save(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let secs = t.elapsed().as_secs_f64();
    out!(
        "embedded {} images ({} skipped) in {:.1} s ({:.1} images/s) -> {}",
        set.items.len(),
        skipped,
        secs,
        set.items.len() as f64 / secs,
        out.display()
    );
    Ok(())
}

fn cmd_train(g: &Global, a: &TrainArgs) -> Result<()> {
    let (dataset, out, val, jobs) = (
        a.dataset.as_path(),
        a.out.as_path(),
        a.val.as_deref(),
        a.jobs,
    );
    check_writable_parent(out)?;
    let mut backbone = None;
    let tr = examples_for(g, dataset, Split::Train, &mut backbone, jobs)?;
    if tr.items.is_empty() {
        bail!("no training image in {} could be read", dataset.display());
    }
    let va = match val {
        Some(v) => {
            let mut set = examples_for(g, v, Split::Val, &mut backbone, jobs)?;
            if !set.backbone.same_as(&tr.backbone) {
                bail!(
                    "{} was embedded with another backbone than {}; re-embed one of them",
                    v.display(),
                    dataset.display()
                );
            }
            remap_classes(&mut set, &tr.classes, v)?;
            Some(set)
        }
        None => None,
    };
    let mut cfg = TrainConfig {
        seed: a.seed,
        holdout: a.val_split.get(),
        threshold: a.threshold.get(),
        ..TrainConfig::default()
    };
    if !a.l2.is_empty() {
        cfg.l2_grid = a.l2.iter().map(|v| v.get()).collect();
    }
    let labels = tr.labels();
    let val_labels = va.as_ref().map(EmbeddingSet::labels);
    let t = Instant::now();
    let (head, report) = train(
        Examples {
            dim: tr.dim,
            data: &tr.data,
            labels: &labels,
            groups: None,
        },
        va.as_ref().zip(val_labels.as_ref()).map(|(v, l)| Examples {
            dim: v.dim,
            data: &v.data,
            labels: l,
            groups: None,
        }),
        tr.classes.clone(),
        &tr.backbone,
        &cfg,
    )
    .map_err(|e| anyhow::anyhow!("cannot train on {}: {e}", dataset.display()))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    head.save(out)?;
    out!(
        "trained {} classes on {} examples in {ms:.0} ms: l2 {:.0e}, {} epochs, held-out accuracy {} ({} examples), training accuracy {:.3} -> {}",
        head.num_classes(),
        labels.len(),
        report.l2,
        report.epochs,
        report
            .holdout_accuracy
            .map_or("n/a".to_string(), |a| format!("{a:.3}")),
        report.holdout_count,
        report.train_accuracy,
        out.display()
    );
    Ok(())
}

/// Renumber `set`'s labels to follow `classes` (by name); unknown class names are an error.
fn remap_classes(set: &mut EmbeddingSet, classes: &[String], origin: &Path) -> Result<()> {
    let map = set
        .classes
        .iter()
        .map(|c| {
            classes.iter().position(|h| h == c).with_context(|| {
                format!(
                    "class {c:?} of {} is not one the head knows ({})",
                    origin.display(),
                    classes.join(", ")
                )
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    for it in &mut set.items {
        it.label = map[it.label];
    }
    set.classes = classes.to_vec();
    Ok(())
}

/// Fail before any long work when `out` cannot be created.
fn check_writable_parent(out: &Path) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write {}: folder {} does not exist; create it first",
            out.display(),
            parent.display()
        );
    }
    Ok(())
}

fn load_head_for(path: &Path, backbone: &BackboneId, dim: usize) -> Result<Head> {
    let head = Head::load(path)?;
    head.check_backbone(path, backbone, dim)?;
    Ok(head)
}

fn cmd_eval(g: &Global, a: &EvalArgs) -> Result<()> {
    let (dataset, head_path, json_out, jobs) =
        (a.dataset.as_path(), a.head.as_path(), a.json, a.jobs);
    // Read the head first: a missing or corrupt head must not cost a whole embedding run.
    let head = Head::load(head_path)?;
    let mut backbone = None;
    let mut set = examples_for(g, dataset, Split::Val, &mut backbone, jobs)?;
    head.check_backbone(head_path, &set.backbone, set.dim)?;
    remap_classes(&mut set, &head.classes, dataset)?;
    if set.items.is_empty() {
        bail!("no image in {} could be read", dataset.display());
    }
    let outcomes: Vec<(usize, usize, bool)> = (0..set.items.len())
        .map(|i| {
            let p = head.predict(set.row(i));
            (set.items[i].label, p.best, p.known)
        })
        .collect();
    let ev = metrics::evaluate(&head.classes, &outcomes);
    if json_out {
        out!("{}", serde_json::to_string(&ev)?);
        return Ok(());
    }
    out!(
        "accuracy {:.4} on {} images ({} below the confidence threshold)",
        ev.accuracy,
        ev.count,
        ev.unknown
    );
    let width = head
        .classes
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(5)
        .max(5);
    for pc in &ev.per_class {
        out!(
            "  {:width$}  {:.3}  ({} images)",
            pc.class,
            pc.accuracy,
            pc.count
        );
    }
    if head.num_classes() <= 12 {
        out!("confusion (rows: true, columns: predicted):");
        out_part!("  {:width$}", "");
        for c in &head.classes {
            out_part!(" {:>w$}", c, w = c.len().max(4));
        }
        out!("");
        for (k, row) in ev.confusion.iter().enumerate() {
            out_part!("  {:width$}", head.classes[k]);
            for (c, n) in head.classes.iter().zip(row) {
                out_part!(" {:>w$}", n, w = c.len().max(4));
            }
            out!("");
        }
    }
    Ok(())
}

fn cmd_classify(g: &Global, a: &ClassifyArgs) -> Result<()> {
    let (images, head_path, top_k) = (&a.images, a.head.as_path(), a.top_k);
    let (json_out, with_embedding) = (a.json, a.embedding);
    let backbone = load_backbone(g)?;
    let head = load_head_for(head_path, backbone.id(), backbone.dim())?;
    let mut emb = backbone.embedder();
    let mut failed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for path in images {
        let img = match imagefolder::load_rgb(path) {
            Ok(i) => i,
            Err(e) => {
                log::error!("cannot read {}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        let e = match emb.embed(&img.rgb, img.width, img.height) {
            Ok(e) => e,
            Err(e) => {
                log::error!("cannot classify {}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        let p = head.predict(&e);
        let top = p.top_k(top_k.max(1));
        if json_out {
            let top: Vec<_> = top
                .iter()
                .map(|&(k, pr)| json!({"class": head.classes[k], "p": pr}))
                .collect();
            let mut v = json!({"path": path.to_string_lossy(), "label": p.label(&head), "confidence": p.confidence, "top": top});
            if with_embedding {
                v["embedding"] = json!(e);
            }
            writeln!(out, "{v}")?;
        } else {
            let rest: Vec<String> = top
                .iter()
                .map(|&(k, pr)| format!("{} {:.3}", head.classes[k], pr))
                .collect();
            writeln!(
                out,
                "{}\t{}\t{}",
                path.display(),
                p.label(&head),
                rest.join(", ")
            )?;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be read", images.len());
    }
    Ok(())
}

/// CPU features relevant to tract's kernels, detected at run time.
pub fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.1") {
            f.push("sse4.1");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            f.push("avx512vnni");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            f.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            f.push("dotprod");
        }
        if std::arch::is_aarch64_feature_detected!("fp16") {
            f.push("fp16");
        }
    }
    f
}

/// The int8 path's kernel per layer type on this CPU, why, and what else could run.
fn int8_kernels_json() -> Result<serde_json::Value> {
    use crate::qnn::cpu::{Layer, runnable_kernels};
    let plan = crate::qnn::KernelPlan::detect().map_err(anyhow::Error::msg)?;
    let mut v = serde_json::Map::new();
    for layer in Layer::ALL {
        let c = plan.get(layer);
        v.insert(
            layer.key().into(),
            json!({
                "kernel": c.kernel.name(),
                "why": c.why,
                "runnable": runnable_kernels(layer, &plan.cpu).iter().map(|k| k.name()).collect::<Vec<_>>(),
            }),
        );
    }
    v.insert("cpu".into(), json!(plan.cpu.features()));
    let (default, why) = crate::backbone::Precision::for_cpu(&plan.cpu);
    v.insert(
        "default_precision".into(),
        json!({"precision": default.name(), "why": why}),
    );
    Ok(serde_json::Value::Object(v))
}

fn cmd_info(g: &Global, json_out: bool) -> Result<()> {
    if !g.backbone().ships(g.precision()) {
        return Err(backbone::ModelError::NotShipped {
            kind: g.backbone(),
            precision: g.precision(),
        }
        .into());
    }
    let dir = backbone::find_models_dir(g.models.as_deref())?;
    let path = dir.join(g.backbone().file_name(g.precision()));
    let check = backbone::verify_model(&path);
    let size = std::fs::metadata(&path).map(|m| m.len()).ok();
    let (kind, why) = backbone::BackboneKind::for_cpu(&crate::qnn::cpu::Cpu::detect());
    let default_backbone = json!({"backbone": kind.name(), "why": why});
    let v = json!({
        "teachcam_version": env!("CARGO_PKG_VERSION"),
        "tract_version": TRACT_VERSION,
        "model_path": path.to_string_lossy(),
        "models_dir": dir.to_string_lossy(),
        "backbone": g.backbone().name(),
        "default_backbone": default_backbone,
        "precision": g.precision().name(),
        "model_bytes": size,
        "model_sha256": check.as_ref().ok(),
        "model_ok": check.is_ok(),
        "model_error": check.as_ref().err().map(|e| e.to_string()),
        "input": [1, 3, g.input_size(), g.input_size()],
        "int8_kernels": int8_kernels_json()?,
        "arch": std::env::consts::ARCH,
        "cpu_features": cpu_features(),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "threads": g.threads(),
    });
    if json_out {
        out!("{v}");
    } else {
        out!(
            "teachcam {} (tract {TRACT_VERSION}), {}",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH
        );
        out!(
            "model      {} ({} {}, {} bytes)",
            path.display(),
            g.backbone(),
            g.precision(),
            size.unwrap_or(0)
        );
        match &check {
            Ok(h) => out!("checksum   ok ({h})"),
            Err(e) => out!("checksum   FAILED: {e}"),
        }
        let px = g.input_size();
        out!("input      1x3x{px}x{px} RGB, x/127.5-1");
        out!("cpu        {}", cpu_features().join(" "));
        out!(
            "threads    {} per frame (--threads, [model] threads)",
            g.threads()
        );
    }
    check.map(|_| ()).map_err(Into::into)
}

/// The run configuration: the file (if any) under the flags.
fn run_config(g: &Global, a: &RunArgs) -> Result<RunConfig, crate::config::ConfigError> {
    let file = match &a.config {
        Some(p) => Some((p.as_path(), ConfigFile::load(p)?)),
        None => None,
    };
    RunConfig::resolve(
        file,
        Overrides {
            state_dir: a.state.clone(),
            status_file: a.status.clone(),
            classes: a.classes.clone(),
            threshold: a.threshold,
            camera: a.camera.clone(),
            fps: a.fps,
            gpio: a.gpio.clone(),
            models: g.models.clone(),
            backbone: g.backbone,
            precision: g.precision,
            input_size: g.input_size,
            threads: g.threads,
            http: a.http,
            burst: a.burst,
        },
    )
}

fn cmd_run(g: &Global, a: &RunCmd) -> Result<()> {
    let c = run_config(g, &a.run)?;
    apply_pixel_limit(&c);
    // Open every input before the slow model load, so a wrong pin or camera fails at once.
    let mut camera = crate::camera::open(&c.camera, &c.camera_opts)?;
    let buttons = c.classes.len() + 1;
    let (mut pins, mut indicator) = crate::gpio::open(&c.gpio, &c.wiring, buttons)?;
    let (mut store, report) = crate::store::Store::open(&c.state_dir)?;
    if report.index_rebuilt && report.samples > 0 {
        log::warn!(
            "rebuilt the sample index of {} from {} records",
            c.state_dir.display(),
            report.samples
        );
    }
    if let Some(p) = &c.status_file
        && let Some(parent) = p.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).with_context(|| {
            format!(
                "cannot create the status file's folder {}",
                parent.display()
            )
        })?;
    }
    // The web console binds (and makes its token) before the slow model load: a taken port
    // fails at once.
    let console = bind_console(&c)?;
    // With the console on, the plan also returns the last feature map, for its heat map
    // (read only while a viewer asks for it).
    let backbone = load_backbone_from(c.models.as_deref(), c.spec(), console.is_some())?;
    // Samples taught with another backbone (the network, precision or input size changed) are
    // re-embedded from their thumbnails, so what was taught is kept across a model change.
    crate::dataset::reembed_stale(&mut store, &mut backbone.embedder())?;
    let settings = crate::daemon::Settings {
        classes: c.classes.clone(),
        buttons,
        source: match c.gpio {
            crate::gpio::GpioSpec::Keyboard => crate::session::Source::Keyboard,
            crate::gpio::GpioSpec::Script(_) => crate::session::Source::Script,
            _ => crate::session::Source::Button,
        },
        duration: a.duration.map(|d| d.duration()),
        train_budget: std::time::Duration::from_secs_f64(c.train_budget.get()),
        status: c.status_file.clone(),
        timing: c.timing,
        threshold: c.threshold.get(),
        inbox: c.inbox_size,
        session: crate::session::SessionConfig {
            smoothing: c.smoothing.get(),
            // The camera is lost after 3 s, or three frame periods at low rates.
            camera_timeout_ms: 3000.max(3 * c.camera_opts.period_ms()),
            press_frames: c.press_frames,
            inbox_every_ms: c.inbox_every_ms,
            inbox_margin: c.inbox_margin,
            // A burst's frames are distinct frames: no faster than the camera delivers them.
            press_every_ms: c.press_every_ms.max(c.camera_opts.period_ms()),
            ..crate::session::SessionConfig::default()
        },
    };
    log::info!("camera {}", camera.describe());
    let mut observers: Vec<crate::daemon::Observer> = mqtt_observer(&c)?.into_iter().collect();
    if let Some(console) = console {
        observers.push(console_observer(console, &c, camera.describe(), &backbone)?);
    }
    let ending = crate::daemon::run(
        &settings,
        &backbone,
        &mut store,
        camera.as_mut(),
        pins.as_mut(),
        indicator.as_mut(),
        observers,
    )?;
    if ending == crate::daemon::Ending::Reload {
        return Err(ReloadRequested.into());
    }
    Ok(())
}

pub use crate::daemon::RELOAD_EXIT_CODE;

/// The config file's `max_pixels` for every decode of this process, unless
/// `TEACHCAM_MAX_PIXELS` is set (the environment overrides the file).
fn apply_pixel_limit(c: &RunConfig) {
    if let Some(n) = c.max_pixels
        && std::env::var_os(crate::decode::MAX_PIXELS_ENV).is_none()
    {
        crate::decode::set_max_pixels(n);
    }
}

/// `teachcam run` stopped cleanly on SIGHUP so that it is started again with its
/// configuration re-read: `main` exits with [`crate::daemon::RELOAD_EXIT_CODE`].
#[derive(Debug, thiserror::Error)]
#[error("stopped on SIGHUP, to be started again with the configuration re-read")]
pub struct ReloadRequested;

/// The web console when the config asks for one: bound (and its token made) before the slow
/// model load, so a taken port fails at once.
#[cfg(feature = "web")]
fn bind_console(c: &RunConfig) -> Result<Option<crate::web::Console>> {
    let Some(addr) = c.http else { return Ok(None) };
    let limits = crate::web::Limits {
        max_upload: c.http_options.max_upload,
        session_ttl: c.http_options.session,
        ..crate::web::Limits::default()
    };
    Ok(Some(crate::web::Console::bind(addr, &c.state_dir, limits)?))
}

/// Without the `web` feature an `[http]` section or `--http` is a start-up error saying so.
#[cfg(not(feature = "web"))]
fn bind_console(c: &RunConfig) -> Result<Option<std::convert::Infallible>> {
    match c.http {
        Some(_) => anyhow::bail!(
            "this teachcam was built without the web console (cargo feature `web`): remove [http] from the config (or --http) or use a build with it"
        ),
        None => Ok(None),
    }
}

/// The console as an observer of the loop: it starts its own threads on the hub and returns.
#[cfg(feature = "web")]
fn console_observer(
    console: crate::web::Console,
    c: &RunConfig,
    camera: String,
    backbone: &Backbone,
) -> Result<crate::daemon::Observer<'static>> {
    out!("teachcam: web console at {}", console.login_url());
    let id = backbone.id();
    let info = crate::web::Info {
        version: env!("CARGO_PKG_VERSION").into(),
        camera,
        model: format!(
            "{} {} {}px {}",
            c.backbone,
            id.precision,
            c.input_size.get(),
            id.digest
        ),
        state_dir: c.state_dir.clone(),
        // The float twin beside the loaded model (the models folder was found above).
        float_model: backbone
            .path()
            .parent()
            .map(|d| d.join(c.backbone.file_name(Precision::F32)))
            .filter(|p| p.is_file()),
        input_size: c.input_size.get(),
        backbone: Some(backbone.clone()),
        config: Some(c.clone()),
    };
    Ok(Box::new(move |hub, _stop| {
        if let Err(e) = console.start(std::sync::Arc::clone(hub), info) {
            log::error!("{e}");
        }
    }))
}

#[cfg(not(feature = "web"))]
fn console_observer(
    console: std::convert::Infallible,
    _: &RunConfig,
    _: String,
    _: &Backbone,
) -> Result<crate::daemon::Observer<'static>> {
    match console {}
}

/// The MQTT link as an observer of the loop, when `[mqtt]` is configured. Its files and the
/// device id are read now (a bad one is a start-up error naming the key); the broker is
/// reached later, on the link's own threads.
#[cfg(feature = "mqtt")]
fn mqtt_observer(c: &RunConfig) -> Result<Option<crate::daemon::Observer<'static>>> {
    let Some(m) = &c.mqtt else { return Ok(None) };
    let link = crate::mqtt::link::prepare(m, &c.state_dir)?;
    Ok(Some(Box::new(move |hub, stop| {
        crate::mqtt::link::run(link, hub, stop)
    })))
}

/// Without the `mqtt` feature a `[mqtt]` section is a start-up error saying so.
#[cfg(not(feature = "mqtt"))]
fn mqtt_observer(c: &RunConfig) -> Result<Option<crate::daemon::Observer<'static>>> {
    match c.mqtt {
        Some(_) => anyhow::bail!(crate::mqtt::NOT_IN_THIS_BUILD),
        None => Ok(None),
    }
}

fn cmd_doctor(g: &Global, a: &DoctorArgs) -> Result<()> {
    let report = crate::doctor::diagnose(run_config(g, &a.run).map_err(|e| e.to_string()));
    let fails = report.failures();
    if a.json {
        out!("{}", serde_json::to_string(&report)?);
    } else {
        for c in &report.checks {
            let mark = match c.status {
                crate::doctor::Status::Ok => "ok  ",
                crate::doctor::Status::Note => "    ",
                crate::doctor::Status::Fail => "FAIL",
            };
            out!("{mark} {:<7}{}", c.area, c.message);
        }
        if fails == 0 {
            out!("verdict: ready");
        } else {
            out!("verdict: {fails} problem(s); fix the FAIL lines above");
        }
    }
    if fails > 0 {
        bail!("doctor found {fails} problem(s)");
    }
    Ok(())
}

fn cmd_dataset(g: &Global, action: &DatasetAction) -> Result<()> {
    match action {
        DatasetAction::Export {
            state,
            out,
            image_folder,
        } => {
            if !state.join("samples").is_dir() {
                bail!(
                    "{} has no samples/ folder; is it a teachcam state directory?",
                    state.display()
                );
            }
            let (store, _) = crate::store::Store::open(state)?;
            let n = if *image_folder {
                crate::dataset::export_folder(&store, out)?
            } else {
                crate::dataset::export_tar(&store, out)?
            };
            out!(
                "exported {n} samples from {} to {}",
                state.display(),
                out.display()
            );
            Ok(())
        }
        DatasetAction::Import { state, input } => {
            if !input.exists() {
                bail!("{} does not exist", input.display());
            }
            let (mut store, _) = crate::store::Store::open(state)?;
            let backbone = load_backbone(g)?;
            let mut emb = backbone.embedder();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let r = crate::dataset::import(&mut store, &mut emb, input, now)?;
            out!(
                "imported {} samples into {} ({} already there, {} embedded here); {} samples in all",
                r.added,
                state.display(),
                r.skipped,
                r.embedded,
                store.samples().len()
            );
            Ok(())
        }
    }
}
