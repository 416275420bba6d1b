//! Glue for `teachcam explain`, `features`, `dream` and `attack` (part of [`crate::app`]):
//! load models and heads, read and write files, print. The work is in [`crate::inspect`]
//! and [`crate::grad`].

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{check_writable_parent, load_backbone_from, load_head_for};
use crate::backbone::{self, Backbone, Precision, Spec};
use crate::cli::{AttackArgs, DreamArgs, ExplainArgs, FeaturesArgs, Global};
use crate::frame::Frame;
use crate::grad::Network;
use crate::head::Head;
use crate::imagefolder;
use crate::inspect::{attack, dream, explain::Explainer, render};

/// A class given by name or index.
fn class_index(head: &Head, class: &str) -> Result<usize> {
    if let Some(k) = head.classes.iter().position(|c| c == class) {
        return Ok(k);
    }
    match class.parse::<usize>() {
        Ok(k) if k < head.num_classes() => Ok(k),
        _ => bail!(
            "class {class:?} is not one the head knows ({})",
            head.classes.join(", ")
        ),
    }
}

fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .context("PNG encoding")?;
    crate::fsutil::atomic_write(path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn require_png(path: &Path) -> Result<()> {
    let ok = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !ok {
        bail!(
            "{}: write a .png (lossless); JPEG would change the pixels this command computed",
            path.display()
        );
    }
    check_writable_parent(path)
}

fn load_rgb(path: &Path) -> Result<Frame> {
    imagefolder::load_rgb(path).with_context(|| format!("cannot read image {}", path.display()))
}

/// The float backbone (tract) and the differentiable copy of it, with a head trained on it.
fn float_models(g: &Global, head_path: &Path) -> Result<(Backbone, Network, Head)> {
    let spec = Spec::new(g.backbone(), Precision::F32).sized(g.input_size());
    let b = load_backbone_from(g.models.as_deref(), spec, false)?;
    let head = load_head_for(head_path, b.id(), b.dim()).with_context(|| {
        format!(
            "{} must be trained on the f32 backbone for gradients (teachcam train ... --precision f32)",
            head_path.display()
        )
    })?;
    let t = Instant::now();
    let net = Network::load(b.path(), g.input_size())?;
    log::info!(
        "gradient network ready in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok((b, net, head))
}

/// What the int8 appliance says of an 8-bit image: (class, probability of it, all probs).
fn int8_verdict(
    g: &Global,
    head_path: &Path,
    rgb: &[u8],
    w: usize,
    h: usize,
) -> Result<(usize, Vec<f32>)> {
    let spec = Spec::new(g.backbone(), Precision::Int8).sized(g.input_size());
    let b = load_backbone_from(g.models.as_deref(), spec, false)?;
    let head = load_head_for(head_path, b.id(), b.dim())?;
    let e = b.embedder().embed(rgb, w, h)?;
    let p = head.predict(&e);
    Ok((p.best, p.probs))
}

pub(super) fn explain(g: &Global, a: &ExplainArgs) -> Result<()> {
    check_writable_parent(&a.out)?;
    let head = Head::load(&a.head)?;
    let img = load_rgb(&a.image)?;
    let dir = backbone::find_models_dir(g.models.as_deref())?;
    let b = Backbone::load_with_map(&dir, g.spec())?;
    head.check_backbone(&a.head, b.id(), b.dim())?;
    let explainer = Explainer::new(&head);
    let mut emb = b.embedder();
    let t = Instant::now();
    let (e, map) = emb.embed_with_map(&img.rgb, img.width, img.height)?;
    let pred = head.predict(&e);
    let class = match &a.class {
        Some(c) => class_index(&head, c)?,
        None => pred.best,
    };
    let t_map = Instant::now();
    let cm = explainer.map(class, &map);
    let map_us = t_map.elapsed().as_secs_f64() * 1e6;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let side = b.input_size();
    let seen = render::input_to_rgb(emb.input(), side);
    write_png(&a.out, &render::overlay(&seen, side, &cm))?;
    if let Some(j) = &a.json {
        let v = json!({
            "image": a.image.to_string_lossy(),
            "precision": g.precision().name(),
            "class": head.classes[class],
            "predicted": head.classes[pred.best],
            "probs": head.classes.iter().zip(&pred.probs).map(|(c, p)| json!({"class": c, "p": p})).collect::<Vec<_>>(),
            "map": cm,
            "map_sum": cm.values.iter().sum::<f32>(),
        });
        crate::fsutil::atomic_write(j, format!("{v}\n").as_bytes())
            .with_context(|| format!("cannot write {}", j.display()))?;
    }
    out!(
        "{}: {} p={:.3}; map of {} (logit {:.3} = bias {:.3} + sum of {}x{} cells), peak at row {} col {} -> {} (backbone + map {ms:.1} ms, map alone {map_us:.0} us)",
        a.image.display(),
        pred.label(&head),
        pred.confidence,
        head.classes[class],
        cm.logit,
        cm.bias,
        cm.h,
        cm.w,
        cm.peak.0,
        cm.peak.1,
        a.out.display()
    );
    Ok(())
}

pub(super) fn features(g: &Global, a: &FeaturesArgs) -> Result<()> {
    let dir = backbone::find_models_dir(g.models.as_deref())?;
    let net = Network::load(
        &dir.join(g.backbone().file_name(Precision::F32)),
        g.input_size(),
    )?;
    let layers = net.layers();
    let list = || -> Result<()> {
        for (i, l) in layers.iter().enumerate() {
            out!(
                "{i:3}  {:<18} {:<28} {}x{}x{}",
                l.op,
                l.name,
                l.shape.c,
                l.shape.h,
                l.shape.w
            );
        }
        Ok(())
    };
    let (Some(layer), Some(out), false) = (&a.layer, &a.out, a.list) else {
        return list();
    };
    let k = match layers.iter().position(|l| &l.name == layer) {
        Some(k) => k,
        None => match layer.parse::<usize>() {
            Ok(k) if k < layers.len() => k,
            _ => bail!(
                "layer {layer:?} is neither a number below {} nor a tensor name; `teachcam features IMAGE --list` shows them",
                layers.len()
            ),
        },
    };
    check_writable_parent(out)?;
    let img = load_rgb(&a.image)?;
    let side = g.input_size();
    let plan = crate::preprocess::Plan::new(img.width, img.height, side);
    let mut x = vec![0f32; 3 * side * side];
    plan.run(&img.rgb, &mut x);
    let mut tape = net.tape();
    net.forward(&mut tape, &x);
    let l = &layers[k];
    let v = net.value(&tape, &l.name).context("layer value")?;
    let plane = l.shape.h * l.shape.w;
    let n = a.channels.clamp(1, l.shape.c);
    let chans: Vec<&[f32]> = v.chunks_exact(plane).take(n).collect();
    let cols = (n as f64).sqrt().ceil() as usize;
    let tile = (448 / cols).max(l.shape.w).max(16);
    write_png(
        out,
        &render::channel_grid(&chans, l.shape.h, l.shape.w, cols, tile),
    )?;
    out!(
        "layer {k} {} ({}, {}x{}x{}): first {n} channels -> {}",
        l.name,
        l.op,
        l.shape.c,
        l.shape.h,
        l.shape.w,
        out.display()
    );
    Ok(())
}

pub(super) fn dream(g: &Global, a: &DreamArgs) -> Result<()> {
    require_png(&a.out)?;
    if !(a.tv_weight >= 0.0 && a.tv_weight.is_finite() && a.lr > 0.0 && a.lr.is_finite()) {
        bail!("--tv-weight must be >= 0 and --lr > 0");
    }
    let (b, net, head) = float_models(g, &a.head)?;
    let class = class_index(&head, &a.class)?;
    let cfg = dream::DreamConfig {
        steps: a.steps.min(100_000),
        lr: a.lr,
        tv_weight: a.tv_weight,
        seed: a.seed,
    };
    let t = Instant::now();
    let d = dream::dream(&net, &head, class, &cfg);
    let secs = t.elapsed().as_secs_f64();
    let rgb = d.to_rgb8();
    let img =
        image::RgbImage::from_raw(d.side as u32, d.side as u32, rgb.clone()).context("canvas")?;
    write_png(&a.out, &img)?;
    // The written 8-bit file through the appliance's own path (tract, preprocessing).
    let p = head.predict(&b.embedder().embed(&rgb, d.side, d.side)?);
    let int8 = match &a.check_int8 {
        Some(h8) => Some(int8_verdict(g, h8, &rgb, d.side, d.side)?),
        None => None,
    };
    let per_step = secs / (cfg.steps.max(1) as f64);
    if a.json {
        let mut v = json!({
            "class": head.classes[class], "steps": cfg.steps, "seed": cfg.seed,
            "tv_weight": cfg.tv_weight, "lr": cfg.lr, "seconds": secs, "seconds_per_step": per_step,
            "prob": d.prob, "tv": d.tv, "f32_png_prob": p.probs[class],
            "f32_png_class": head.classes[p.best], "trace": d.trace,
            "first_step_at_0_9": d.trace.iter().find(|s| s.prob >= 0.9).map(|s| s.step),
        });
        if let Some((k, probs)) = &int8 {
            v["int8_class"] = json!(head.classes.get(*k));
            v["int8_prob_of_class"] = json!(probs.get(class));
        }
        out!("{v}");
    } else {
        out!(
            "dreamed {} in {} steps ({secs:.1} s, {per_step:.3} s/step): p={:.3}, total variation {:.5} -> {}",
            head.classes[class],
            cfg.steps,
            d.prob,
            d.tv,
            a.out.display()
        );
        out!(
            "  the 8-bit PNG, float backbone: {} p={:.3}",
            head.classes[p.best],
            p.probs[class]
        );
        if let Some((k, probs)) = &int8 {
            out!(
                "  the 8-bit PNG, int8 backbone: {} (p of {} = {:.3})",
                head.classes.get(*k).map_or("?", String::as_str),
                head.classes[class],
                probs.get(class).copied().unwrap_or(f32::NAN)
            );
        }
    }
    Ok(())
}

pub(super) fn attack(g: &Global, a: &AttackArgs) -> Result<()> {
    require_png(&a.out)?;
    let (b, net, head) = float_models(g, &a.head)?;
    let target = class_index(&head, &a.target)?;
    let img = load_rgb(&a.image)?;
    let cfg = attack::AttackConfig {
        target,
        eps: a.eps,
        max_steps: a.steps.min(100_000),
    };
    let t = Instant::now();
    let r = attack::attack(&net, &head, &img.rgb, img.width, img.height, &cfg);
    let secs = t.elapsed().as_secs_f64();
    let out = image::RgbImage::from_raw(img.width as u32, img.height as u32, r.pixels.clone())
        .context("image size")?;
    write_png(&a.out, &out)?;
    // Re-check the written file through tract's float path: what `classify` will say.
    let p = head.predict(&b.embedder().embed(&r.pixels, img.width, img.height)?);
    let top = |v: &[f32]| {
        (0..v.len())
            .max_by(|&i, &j| v[i].total_cmp(&v[j]))
            .unwrap_or(0)
    };
    let (k0, k1) = (top(&r.before), top(&r.after));
    let int8 = match &a.check_int8 {
        Some(h8) => Some((
            int8_verdict(g, h8, &img.rgb, img.width, img.height)?,
            int8_verdict(g, h8, &r.pixels, img.width, img.height)?,
        )),
        None => None,
    };
    if a.json {
        let mut v = json!({
            "image": a.image.to_string_lossy(), "target": head.classes[target], "eps": a.eps,
            "success": r.success, "steps": r.steps, "seconds": secs,
            "before": head.classes[k0], "before_p": r.before[k0], "before_target_p": r.before[target],
            "after": head.classes[k1], "after_p": r.after[k1], "after_target_p": r.after[target],
            "linf": r.linf, "l2": r.l2, "f32_png_class": head.classes[p.best], "f32_png_p": p.confidence,
        });
        if let Some(((k8a, pa), (k8b, pb))) = &int8 {
            v["int8_before"] = json!(head.classes.get(*k8a));
            v["int8_before_p"] = json!(pa.get(*k8a));
            v["int8_after"] = json!(head.classes.get(*k8b));
            v["int8_after_p"] = json!(pb.get(*k8b));
            v["int8_fooled"] = json!(*k8b == target);
        }
        out!("{v}");
    } else {
        out!("original: {} p={:.3}", head.classes[k0], r.before[k0]);
        out!(
            "changed:  {} p={:.3} ({}; target {} p={:.3}) after {} steps, {secs:.1} s",
            head.classes[k1],
            r.after[k1],
            if r.success { "reached" } else { "NOT reached" },
            head.classes[target],
            r.after[target],
            r.steps
        );
        out!(
            "change:   L-inf {}/255, L2 {:.3} on the 0-1 scale ({:.1} levels) over all channels -> {}",
            r.linf,
            r.l2,
            r.l2 * 255.0,
            a.out.display()
        );
        out!(
            "the PNG, float backbone (classify's path): {} p={:.3}",
            head.classes[p.best],
            p.confidence
        );
        if let Some(((k8a, pa), (k8b, pb))) = &int8 {
            out!(
                "int8 backbone: original {} p={:.3}; changed {} p={:.3}: {}",
                head.classes[*k8a],
                pa[*k8a],
                head.classes[*k8b],
                pb[*k8b],
                if *k8b == target {
                    "fooled too"
                } else {
                    "not fooled"
                }
            );
        }
    }
    Ok(())
}
