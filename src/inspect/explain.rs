//! Class-activation maps: where in the picture a class's score comes from.
//!
//! The head is linear on `z = (e/‖e‖ − mean) ⊙ inv_std` with `e` the mean of the last feature
//! map `F` over its `h·w` positions, so with `v = W_class ⊙ inv_std`:
//!
//! `logit − bias = v·e/‖e‖ − v·mean = Σ_p [ v·F_p / (h·w·‖e‖) − v·mean/(h·w) ]`
//!
//! — an exact split of the score over positions (‖e‖ is one number per image). No gradient,
//! no second pass: one dot product of 1280 per position on top of the backbone's own pass.
//!
//! Owns: that decomposition, precomputed per head ([`Explainer`]). Must not: run the backbone
//! or draw (callers hand it the [`FeatureMap`] an embedder returned; [`super::render`] draws).

use crate::backbone::FeatureMap;
use crate::head::Head;
use crate::linalg::dot;

/// A head prepared for per-frame maps: `W ⊙ inv_std` per class and its constant term.
#[derive(Debug, Clone)]
pub struct Explainer {
    dim: usize,
    v: Vec<f32>,
    offset: Vec<f32>,
    bias: Vec<f32>,
}

/// One class's map over the feature-map positions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassMap {
    /// Class index.
    pub class: usize,
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Contribution of each position to `logit − bias`, row-major; sums to it.
    pub values: Vec<f32>,
    /// The class logit (`Σ values + bias`).
    pub logit: f32,
    /// The head's bias for the class.
    pub bias: f32,
    /// Position with the largest contribution (row, column).
    pub peak: (usize, usize),
}

impl Explainer {
    /// Prepare `head` (once; reuse for every frame).
    pub fn new(head: &Head) -> Self {
        let d = head.dim;
        let mut v = vec![0f32; head.weights.len()];
        let mut offset = Vec::with_capacity(head.num_classes());
        for k in 0..head.num_classes() {
            let row = &mut v[k * d..(k + 1) * d];
            for ((o, w), s) in row
                .iter_mut()
                .zip(&head.weights[k * d..])
                .zip(&head.inv_std)
            {
                *o = w * s;
            }
            offset.push(dot(row, &head.mean));
        }
        Explainer {
            dim: d,
            v,
            offset,
            bias: head.bias.clone(),
        }
    }

    /// The map of `class` for a frame whose last feature map is `map` (from
    /// [`crate::backbone::Embedder::embed_with_map`]). The split is exact for the embedding
    /// `map` pools to ([`pooled`]): that is the backbone's embedding for every shipped
    /// variant but `qdq`, whose graph fake-quantises the pooled vector once more.
    pub fn map(&self, class: usize, map: &FeatureMap) -> ClassMap {
        assert_eq!(map.c, self.dim, "feature map channels");
        let pooled = pooled(map);
        let n = (map.h * map.w) as f32;
        let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        let v = &self.v[class * self.dim..(class + 1) * self.dim];
        let constant = self.offset[class] / n;
        let values: Vec<f32> = map
            .data
            .chunks_exact(map.c)
            .map(|f| dot(v, f) / (n * norm) - constant)
            .collect();
        let best = (0..values.len())
            .max_by(|&a, &b| values[a].total_cmp(&values[b]))
            .unwrap_or(0);
        ClassMap {
            class,
            h: map.h,
            w: map.w,
            logit: values.iter().sum::<f32>() + self.bias[class],
            bias: self.bias[class],
            values,
            peak: (best / map.w.max(1), best % map.w.max(1)),
        }
    }
}

/// The mean of a feature map over its positions (the global average pool).
pub fn pooled(map: &FeatureMap) -> Vec<f32> {
    let mut e = vec![0f32; map.c];
    for f in map.data.chunks_exact(map.c) {
        for (a, v) in e.iter_mut().zip(f) {
            *a += v;
        }
    }
    let n = (map.h * map.w).max(1) as f32;
    e.iter_mut().for_each(|a| *a /= n);
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn positions_sum_to_the_logit_minus_bias_of_predict() {
        let mut r = Rng::new(3);
        let (dim, classes, h, w) = (16, 3, 3, 4);
        let head = Head {
            classes: (0..classes).map(|k| format!("c{k}")).collect(),
            dim,
            mean: (0..dim).map(|_| r.f32() * 0.2).collect(),
            inv_std: (0..dim).map(|_| 0.5 + r.f32()).collect(),
            weights: (0..dim * classes).map(|_| r.normal()).collect(),
            bias: (0..classes).map(|_| r.normal()).collect(),
            threshold: 0.5,
            backbone: crate::backbone::BackboneId {
                precision: "f32".into(),
                ..Default::default()
            },
            info: Default::default(),
        };
        let data: Vec<f32> = (0..h * w * dim)
            .map(|_| (r.normal() + 1.0).clamp(0.0, 6.0))
            .collect();
        let map = FeatureMap { h, w, c: dim, data };
        let pooled = pooled(&map);
        let mut z = vec![0f32; dim];
        head.features(&pooled, &mut z);
        let mut logits = vec![0f32; classes];
        head.logits(&z, &mut logits);
        let ex = Explainer::new(&head);
        for (k, &logit) in logits.iter().enumerate() {
            let m = ex.map(k, &map);
            let sum: f32 = m.values.iter().sum();
            assert!((sum - (logit - head.bias[k])).abs() < 1e-5 * (1.0 + logit.abs()));
            assert!((m.logit - logit).abs() < 1e-5 * (1.0 + logit.abs()));
            let peak = m.values[m.peak.0 * w + m.peak.1];
            assert!(m.values.iter().all(|&v| v <= peak));
        }
    }
}
