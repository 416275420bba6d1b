//! "What does it think a <class> looks like": gradient ascent on an image until the head is
//! sure of a class, with a total-variation penalty so the result is smooth instead of noise.
//! The ascended score is the class's log-odds against the others ([`log_odds`]), which keeps
//! pulling after `p` is near 1, minus `tv_weight` times the total variation.
//!
//! The image is optimised in pixel space through the real preprocessing (a canvas whose
//! centre crop is exactly the model input: 256 px for 224), so the PNG written is what
//! `teachcam classify` reads. Seeded: same seed, same image, byte for byte.
//! Must not: touch files or the command line.

use crate::grad::{Network, Tape};
use crate::head::Head;
use crate::preprocess::Plan;
use crate::rng::Rng;

use super::objective::{log_odds, total_variation};

/// Settings of one dream.
#[derive(Debug, Clone, PartialEq)]
pub struct DreamConfig {
    /// Gradient steps.
    pub steps: usize,
    /// Length in pixels (0–255) of the first step for the average pixel (the step size is
    /// then kept).
    pub lr: f32,
    /// Weight of the total-variation penalty (see [`total_variation`]).
    pub tv_weight: f32,
    /// Seed of the starting noise.
    pub seed: u64,
}

impl Default for DreamConfig {
    fn default() -> Self {
        DreamConfig {
            steps: 40,
            lr: 3.0,
            tv_weight: 3000.0,
            seed: 0,
        }
    }
}

/// Progress after one step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DreamStep {
    /// Step number (1-based).
    pub step: usize,
    /// Probability of the class before this step's update.
    pub prob: f32,
    /// Total variation before this step's update.
    pub tv: f32,
}

/// The result: a square RGB canvas in 0–255 floats and how it got there.
#[derive(Debug, Clone)]
pub struct Dream {
    /// Packed RGB, `side × side`, 0–255.
    pub pixels: Vec<f32>,
    /// Canvas side.
    pub side: usize,
    /// Probability of the class for the final (float) image.
    pub prob: f32,
    /// Total variation of the final image.
    pub tv: f32,
    /// Per step.
    pub trace: Vec<DreamStep>,
}

impl Dream {
    /// The canvas as 8-bit pixels (what gets written).
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.pixels
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

/// Canvas side whose centre crop is exactly a `side` model input (256 for 224).
pub fn canvas_side(input_side: usize) -> usize {
    input_side * 256 / 224
}

/// Dream `class` of `head` through `net` (the float backbone the head was trained on).
pub fn dream(net: &Network, head: &Head, class: usize, cfg: &DreamConfig) -> Dream {
    let input_side = net.input_shape().h;
    let side = canvas_side(input_side);
    let plan = Plan::new(side, side, input_side);
    let mut rng = Rng::new(cfg.seed);
    let mut img: Vec<f32> = (0..side * side * 3)
        .map(|_| (128.0 + 24.0 * rng.normal()).clamp(0.0, 255.0))
        .collect();
    let mut tape: Tape = net.tape();
    let mut x = vec![0f32; 3 * input_side * input_side];
    let mut d_emb = vec![0f32; head.dim];
    let mut d_pix = vec![0f32; img.len()];
    let mut trace = Vec::with_capacity(cfg.steps);
    let eval = |img: &[f32], tape: &mut Tape, x: &mut [f32], d_emb: &mut [f32]| {
        plan.run_f32(img, x);
        let e = net.forward(tape, x).to_vec();
        log_odds(head, &e, class, d_emb).1[class]
    };
    // One step size for the whole run, fixed at the first step so that the average pixel
    // moves `lr` along the class gradient; the class term then fades as p → 1 while the
    // penalty keeps acting. A fixed step keeps the penalty's descent stable (a step
    // normalised to the shrinking class gradient would blow it up and raise the TV).
    let mut eta: Option<f32> = None;
    // Ascent on −λ·TV is stable while η·λ·16/(255²·pixels) < 2; stay at half that.
    let tv_cap = |eta: f32| (255.0 * 255.0 * (side * side) as f32) / (16.0 * eta.max(1e-30));
    for step in 1..=cfg.steps {
        let prob = eval(&img, &mut tape, &mut x, &mut d_emb);
        d_pix.fill(0.0);
        let d_x = net.backward(&mut tape, &d_emb);
        plan.adjoint(d_x, &mut d_pix);
        let eta = *eta.get_or_insert_with(|| {
            let mean_abs = d_pix.iter().map(|g| g.abs()).sum::<f32>() / d_pix.len() as f32;
            if mean_abs > 0.0 {
                cfg.lr / mean_abs
            } else {
                0.0
            }
        });
        let weight = cfg.tv_weight.min(tv_cap(eta));
        // Ascend log p − λ·TV: the penalty's gradient enters with a minus sign.
        let tv = total_variation(&img, side, side, -weight, Some(&mut d_pix));
        trace.push(DreamStep { step, prob, tv });
        for (p, g) in img.iter_mut().zip(&d_pix) {
            *p = (*p + eta * g).clamp(0.0, 255.0);
        }
    }
    let prob = eval(&img, &mut tape, &mut x, &mut d_emb);
    let tv = total_variation(&img, side, side, 0.0, None);
    Dream {
        pixels: img,
        side,
        prob,
        tv,
        trace,
    }
}
