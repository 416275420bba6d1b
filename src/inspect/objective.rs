//! The head as a differentiable function of the embedding: log-probability of a class and its
//! gradient, through L2 normalisation, standardisation and the linear layer (the same
//! arithmetic as [`Head::predict`]); and the total-variation penalty on images.
//!
//! Must not: run the backbone (callers chain this with [`crate::grad`]).

use crate::head::{Head, softmax};

/// Log-probability of `class` for `embedding`, the class probabilities, and
/// `d_emb = ∂ log p(class) / ∂ embedding` (overwritten).
pub fn log_prob(
    head: &Head,
    embedding: &[f32],
    class: usize,
    d_emb: &mut [f32],
) -> (f32, Vec<f32>) {
    let probs = probabilities(head, embedding);
    let logp = probs[class].max(f32::MIN_POSITIVE).ln();
    // ∂/∂logit_k = [k = class] − p_k.
    let d_logits: Vec<f32> = probs
        .iter()
        .enumerate()
        .map(|(k, p)| if k == class { 1.0 - p } else { -p })
        .collect();
    through_head(head, embedding, &d_logits, d_emb);
    (logp, probs)
}

/// The class's log-odds against the others, `logit_c − log Σ_{k≠c} exp(logit_k)` (just
/// `logit_c` for a one-class head), the probabilities, and its gradient in `d_emb`. Unlike
/// `log p` it does not flatten as `p → 1`, so an image can keep becoming more of the class
/// (`dream` ascends it).
pub fn log_odds(
    head: &Head,
    embedding: &[f32],
    class: usize,
    d_emb: &mut [f32],
) -> (f32, Vec<f32>) {
    let mut z = vec![0f32; head.dim];
    head.features(embedding, &mut z);
    let mut logits = vec![0f32; head.num_classes()];
    head.logits(&z, &mut logits);
    let mut probs = logits.clone();
    softmax(&mut probs);
    // Softmax over the other classes: ∂LSE/∂logit_k.
    let m = logits
        .iter()
        .enumerate()
        .filter(|&(k, _)| k != class)
        .map(|(_, &l)| l)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut d_logits = vec![0f32; logits.len()];
    let mut value = logits[class];
    if m.is_finite() {
        let sum: f32 = logits
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != class)
            .map(|(_, &l)| (l - m).exp())
            .sum();
        value -= m + sum.ln();
        for (k, (d, &l)) in d_logits.iter_mut().zip(&logits).enumerate() {
            if k != class {
                *d = -(l - m).exp() / sum;
            }
        }
    }
    d_logits[class] = 1.0;
    through_head(head, embedding, &d_logits, d_emb);
    (value, probs)
}

fn probabilities(head: &Head, embedding: &[f32]) -> Vec<f32> {
    let mut z = vec![0f32; head.dim];
    head.features(embedding, &mut z);
    let mut probs = vec![0f32; head.num_classes()];
    head.logits(&z, &mut probs);
    softmax(&mut probs);
    probs
}

/// Chain a gradient with respect to the logits back to the embedding:
/// `∂/∂z = Wᵀ·d`, `∂/∂u = ∂z ⊙ inv_std` (u = e/‖e‖), `∂/∂e = (I − u uᵀ)·∂u/‖e‖`.
fn through_head(head: &Head, embedding: &[f32], d_logits: &[f32], d_emb: &mut [f32]) {
    let dim = head.dim;
    assert_eq!(embedding.len(), dim);
    assert_eq!(d_emb.len(), dim);
    let norm = embedding
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(1e-12);
    let mut du = vec![0f32; dim];
    for (k, &a) in d_logits.iter().enumerate() {
        crate::linalg::axpy(&mut du, a, &head.weights[k * dim..(k + 1) * dim]);
    }
    for (d, s) in du.iter_mut().zip(&head.inv_std) {
        *d *= s;
    }
    let u_du: f32 = embedding.iter().zip(&du).map(|(e, d)| e / norm * d).sum();
    for ((o, d), e) in d_emb.iter_mut().zip(&du).zip(embedding) {
        *o = (d - e / norm * u_du) / norm;
    }
}

/// Total variation of a packed RGB image in 0–255 pixels, in (pixel/255)² units: the sum over
/// horizontally and vertically adjacent pairs of squared differences, divided by the number
/// of pixels. When `grad` is given, `grad += weight · ∂TV/∂pixel`.
pub fn total_variation(
    img: &[f32],
    w: usize,
    h: usize,
    weight: f32,
    mut grad: Option<&mut [f32]>,
) -> f32 {
    assert_eq!(img.len(), w * h * 3);
    let scale = 1.0 / (255.0 * 255.0 * (w * h) as f32);
    let mut tv = 0f32;
    let mut pair = |a: usize, b: usize, grad: &mut Option<&mut [f32]>| {
        let d = img[a] - img[b];
        tv += d * d;
        if let Some(g) = grad {
            let gd = 2.0 * d * scale * weight;
            g[a] += gd;
            g[b] -= gd;
        }
    };
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let i = (y * w + x) * 3 + c;
                if x + 1 < w {
                    pair(i, i + 3, &mut grad);
                }
                if y + 1 < h {
                    pair(i, i + 3 * w, &mut grad);
                }
            }
        }
    }
    tv * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Each coordinate of gradient `g` of `f` at `e` agrees with a central difference.
    fn matches_central_differences(e: &[f32], g: &[f32], mut f: impl FnMut(&[f32]) -> f32) {
        let step = 1e-2;
        let mut ep = e.to_vec();
        for i in 0..e.len() {
            ep[i] = e[i] + step;
            let up = f(&ep) as f64;
            ep[i] = e[i] - step;
            let down = f(&ep) as f64;
            ep[i] = e[i];
            let fd = (up - down) / (2.0 * step as f64);
            assert!(
                (fd - g[i] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                "{i}: {fd} vs {}",
                g[i]
            );
        }
    }

    fn head(dim: usize, classes: usize, r: &mut Rng) -> Head {
        Head {
            classes: (0..classes).map(|k| format!("c{k}")).collect(),
            dim,
            mean: (0..dim).map(|_| r.f32() * 0.1).collect(),
            inv_std: (0..dim).map(|_| 0.5 + r.f32() * 3.0).collect(),
            weights: (0..dim * classes).map(|_| r.normal()).collect(),
            bias: (0..classes).map(|_| r.normal()).collect(),
            threshold: 0.5,
            backbone: Default::default(),
            info: Default::default(),
        }
    }

    #[test]
    fn log_prob_gradient_matches_finite_differences_and_predict() {
        let mut r = Rng::new(2);
        let (dim, classes) = (12, 3);
        let h = head(dim, classes, &mut r);
        let e: Vec<f32> = (0..dim).map(|_| r.f32() * 2.0).collect();
        let mut g = vec![0f32; dim];
        let (lp, probs) = log_prob(&h, &e, 1, &mut g);
        assert_eq!(probs, h.predict(&e).probs);
        assert!((lp - probs[1].ln()).abs() < 1e-6);
        let mut scratch = vec![0f32; dim];
        matches_central_differences(&e, &g, |ep| log_prob(&h, ep, 1, &mut scratch).0);
    }

    #[test]
    fn log_odds_gradient_matches_finite_differences() {
        let mut r = Rng::new(6);
        let (dim, classes) = (10, 3);
        let h = head(dim, classes, &mut r);
        let e: Vec<f32> = (0..dim).map(|_| r.f32() * 2.0).collect();
        let mut g = vec![0f32; dim];
        let (v, probs) = log_odds(&h, &e, 2, &mut g);
        // log-odds against the others = log p_c − log(1 − p_c).
        let want = probs[2].ln() - (1.0 - probs[2]).ln();
        assert!((v - want).abs() < 1e-4, "{v} vs {want}");
        let mut scratch = vec![0f32; dim];
        matches_central_differences(&e, &g, |ep| log_odds(&h, ep, 2, &mut scratch).0);
    }

    #[test]
    fn total_variation_gradient_matches_finite_differences() {
        let mut r = Rng::new(8);
        let (w, h) = (5, 4);
        let img: Vec<f32> = (0..w * h * 3).map(|_| r.f32() * 255.0).collect();
        let mut g = vec![0f32; img.len()];
        let tv = total_variation(&img, w, h, 2.0, Some(&mut g));
        assert!(tv > 0.0);
        for i in [0, 7, 31, img.len() - 1] {
            let mut p = img.clone();
            p[i] += 0.5;
            let up = total_variation(&p, w, h, 2.0, None) as f64;
            p[i] -= 1.0;
            let down = total_variation(&p, w, h, 2.0, None) as f64;
            let fd = 2.0 * (up - down);
            assert!(
                (fd - g[i] as f64).abs() < 1e-4 * (1.0 + fd.abs()),
                "{i}: {fd} vs {}",
                g[i]
            );
        }
        // A flat image has none.
        assert_eq!(total_variation(&vec![9.0; w * h * 3], w, h, 1.0, None), 0.0);
    }
}
