//! Tests of the pieces together on the shipped float model (small inputs: seconds in CI).

use std::path::Path;

use super::attack::{AttackConfig, attack};
use super::dream::{DreamConfig, dream};
use super::explain::Explainer;
use crate::backbone::{Backbone, BackboneKind, Precision, Spec};
use crate::grad::Network;
use crate::head::Head;
use crate::rng::Rng;

fn models() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
}

/// A head on 1280-d features with random weights (what it means does not matter here).
fn random_head(classes: usize, seed: u64) -> Head {
    let mut r = Rng::new(seed);
    let dim = 1280;
    Head {
        classes: (0..classes).map(|k| format!("c{k}")).collect(),
        dim,
        mean: vec![0.02; dim],
        inv_std: vec![30.0; dim],
        weights: (0..dim * classes).map(|_| r.normal() * 0.05).collect(),
        bias: vec![0.0; classes],
        threshold: 0.5,
        backbone: Default::default(),
        info: Default::default(),
    }
}

fn scene(w: usize, h: usize, seed: u64) -> Vec<u8> {
    crate::demo::render(seed as usize % 3, w, h, &mut Rng::new(seed))
}

#[test]
fn explain_maps_sum_to_the_score_for_every_precision() {
    let (w, h) = (160, 120);
    let rgb = scene(w, h, 4);
    let head = random_head(3, 1);
    let ex = Explainer::new(&head);
    for p in Precision::ALL {
        let b = Backbone::load_with_map(models(), Spec::new(BackboneKind::MobileNetV2, p)).unwrap();
        let mut emb = b.embedder();
        let (e, map) = emb.embed_with_map(&rgb, w, h).unwrap();
        assert_eq!((map.h, map.w, map.c), (7, 7, 1280), "{p}");
        // The loop's path (the embedder's kept state, twice: the state is reused) gives the
        // same embedding and map.
        for _ in 0..2 {
            emb.preprocess(&rgb, w, h);
            let (e2, map2) = emb.run_with_map().unwrap();
            assert_eq!(e2, e, "{p}");
            assert_eq!(map2.as_ref(), Some(&map), "{p}");
        }
        // The extra output changes nothing about the embedding.
        let plain = Backbone::load(models(), Spec::new(BackboneKind::MobileNetV2, p)).unwrap();
        assert_eq!(plain.embedder().embed(&rgb, w, h).unwrap(), e, "{p}");
        // The map pools to the embedding (qdq fake-quantises the pooled vector once more:
        // within its quantisation step).
        let pooled = crate::inspect::explain::pooled(&map);
        let diff = pooled
            .iter()
            .zip(&e)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let bound = if p == Precision::Qdq { 0.05 } else { 1e-5 };
        assert!(
            diff < bound,
            "{p}: pooled map differs from the embedding by {diff}"
        );
        let mut z = vec![0f32; 1280];
        head.features(&pooled, &mut z);
        let mut logits = vec![0f32; 3];
        head.logits(&z, &mut logits);
        for (k, &logit) in logits.iter().enumerate() {
            let m = ex.map(k, &map);
            let sum: f32 = m.values.iter().sum();
            let want = logit - head.bias[k];
            let err = (sum - want).abs() / want.abs().max(1.0);
            assert!(
                err < 1e-5,
                "{p} class {k}: map sums to {sum}, score − bias is {want}"
            );
        }
    }
}

#[test]
fn dream_is_reproducible_and_smoother_with_more_tv_weight() {
    let net = Network::load(&models().join("mobilenetv2_f32.onnx"), 32).unwrap();
    let head = random_head(2, 7);
    let cfg = DreamConfig {
        steps: 4,
        ..DreamConfig::default()
    };
    let a = dream(&net, &head, 1, &cfg);
    let b = dream(&net, &head, 1, &cfg);
    assert_eq!(a.to_rgb8(), b.to_rgb8(), "same seed, same image");
    let c = dream(
        &net,
        &head,
        1,
        &DreamConfig {
            seed: 1,
            ..cfg.clone()
        },
    );
    assert_ne!(a.to_rgb8(), c.to_rgb8(), "another seed, another image");
    assert!(
        a.prob > a.trace[0].prob,
        "the class probability rises: {:?}",
        a.trace
    );
    let tv: Vec<f32> = [0.0, 3.0, 30.0]
        .iter()
        .map(|&w| {
            dream(
                &net,
                &head,
                1,
                &DreamConfig {
                    tv_weight: w,
                    ..cfg.clone()
                },
            )
            .tv
        })
        .collect();
    assert!(
        tv[0] > tv[1] && tv[1] > tv[2],
        "TV by weight 0, 3, 30: {tv:?}"
    );
}

#[test]
fn attack_reaches_the_target_within_the_budget() {
    let net = Network::load(&models().join("mobilenetv2_f32.onnx"), 32).unwrap();
    let head = random_head(2, 3);
    let (w, h) = (40, 36);
    let rgb = scene(w, h, 2);
    let e = {
        let plan = crate::preprocess::Plan::new(w, h, 32);
        let mut x = vec![0f32; 3 * 32 * 32];
        plan.run(&rgb, &mut x);
        net.forward(&mut net.tape(), &x).to_vec()
    };
    let target = 1 - head.predict(&e).best;
    let cfg = AttackConfig {
        target,
        eps: 8,
        max_steps: 30,
    };
    let r = attack(&net, &head, &rgb, w, h, &cfg);
    assert!(
        r.success,
        "{:?} → {:?} in {} steps",
        r.before, r.after, r.steps
    );
    assert!(r.steps > 0 && r.linf <= 8 && r.l2 > 0.0);
    assert!(r.after[target] > 0.5 && r.before[target] < 0.5);
    // With no budget nothing can change.
    let none = attack(&net, &head, &rgb, w, h, &AttackConfig { eps: 0, ..cfg });
    assert!(!none.success && none.pixels == rgb && none.linf == 0);
}
