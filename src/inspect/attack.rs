//! Adversarial examples: nudge a photo, within an L∞ budget, until the head names a target.
//!
//! The basic iterative method (sign of the gradient of log p(target)) with a step of one
//! pixel level, in the photo's own pixel space through the real preprocessing. Every iterate
//! is therefore an 8-bit image inside the budget: what is tested is exactly what is written,
//! and no rounding at the end can undo the attack.
//! Must not: touch files or the command line.

use crate::grad::{Network, Tape};
use crate::head::Head;
use crate::preprocess::Plan;

use super::objective::log_prob;

/// Settings of one attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttackConfig {
    /// Class to reach.
    pub target: usize,
    /// L∞ budget in pixel levels (1 = 1/255).
    pub eps: u8,
    /// Most gradient steps before giving up.
    pub max_steps: usize,
}

/// What the attack did.
#[derive(Debug, Clone, PartialEq)]
pub struct Attack {
    /// The final image, packed RGB8, same size as the input.
    pub pixels: Vec<u8>,
    /// Steps taken (0: the image already was the target).
    pub steps: usize,
    /// The head's top class is the target on the final image.
    pub success: bool,
    /// Class probabilities of the original image.
    pub before: Vec<f32>,
    /// Class probabilities of the final image.
    pub after: Vec<f32>,
    /// Largest change of any channel of any pixel, in levels.
    pub linf: u8,
    /// Euclidean norm of the change over all channels, on the 0–1 pixel scale (levels/255).
    pub l2: f32,
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]))
        .unwrap_or(0)
}

/// Attack the packed RGB8 `rgb` (`width × height`) towards `cfg.target`.
pub fn attack(
    net: &Network,
    head: &Head,
    rgb: &[u8],
    width: usize,
    height: usize,
    cfg: &AttackConfig,
) -> Attack {
    let side = net.input_shape().h;
    let plan = Plan::new(width, height, side);
    let eps = cfg.eps as f32;
    let orig: Vec<f32> = rgb.iter().map(|&v| v as f32).collect();
    let mut img = orig.clone();
    let mut tape: Tape = net.tape();
    let mut x = vec![0f32; 3 * side * side];
    let mut d_emb = vec![0f32; head.dim];
    let mut d_pix = vec![0f32; img.len()];
    let mut before = Vec::new();
    let mut steps = 0;
    let after = loop {
        plan.run_f32(&img, &mut x);
        let e = net.forward(&mut tape, &x).to_vec();
        let (_, probs) = log_prob(head, &e, cfg.target, &mut d_emb);
        if before.is_empty() {
            before = probs.clone();
        }
        if argmax(&probs) == cfg.target || steps == cfg.max_steps {
            break probs;
        }
        d_pix.fill(0.0);
        let d_x = net.backward(&mut tape, &d_emb);
        plan.adjoint(d_x, &mut d_pix);
        for ((p, &g), &o) in img.iter_mut().zip(&d_pix).zip(&orig) {
            let s = if g > 0.0 {
                1.0
            } else if g < 0.0 {
                -1.0
            } else {
                0.0
            };
            *p = (*p + s).clamp(o - eps, o + eps).clamp(0.0, 255.0);
        }
        steps += 1;
    };
    let pixels: Vec<u8> = img.iter().map(|&v| v as u8).collect();
    let linf = pixels
        .iter()
        .zip(rgb)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    let l2 = pixels
        .iter()
        .zip(rgb)
        .map(|(a, b)| ((*a as f32 - *b as f32) / 255.0).powi(2))
        .sum::<f32>()
        .sqrt();
    Attack {
        success: argmax(&after) == cfg.target,
        pixels,
        steps,
        before,
        after,
        linf,
        l2,
    }
}
