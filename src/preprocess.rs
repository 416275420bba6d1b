//! Frame → model input, in one pass, with no intermediate image.
//!
//! The exact recipe (identical to `models/preprocess.py`, which produced the calibration data
//! and the golden embeddings):
//!
//! 1. centre crop: a square of side `c = min(W, H) · 224/256` (the classic "resize the short
//!    side to 256, crop 224"), at `x0 = (W − c)/2`, `y0 = (H − c)/2` (fractional);
//! 2. resample that square to `S × S` with a separable triangle filter whose support widens
//!    with the reduction (`support = max(c/S, 1)`), so downscaling averages instead of
//!    aliasing; output `j` is centred at `x0 + (j + ½)·c/S`, source pixel `k` at `k + ½`;
//! 3. scale `v / 127.5 − 1`, RGB, planar NCHW.
//!
//! Must not: decode files or own buffers beyond one row of accumulators.

/// Precomputed filter taps for one axis: for each output index, the first source index and
/// the normalised weights of consecutive source pixels from there.
#[derive(Debug, Clone)]
pub struct Taps {
    starts: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

impl Taps {
    /// Taps mapping a source axis of length `len` (cropped at `origin`, side `side`) to `out`.
    pub fn new(len: usize, origin: f64, side: f64, out: usize) -> Self {
        let scale = side / out as f64;
        let support = scale.max(1.0);
        let mut starts = Vec::with_capacity(out);
        let mut weights = Vec::with_capacity(out);
        for j in 0..out {
            let centre = origin + (j as f64 + 0.5) * scale;
            let lo = (centre - support - 0.5).floor().max(0.0) as usize;
            let hi = ((centre + support - 0.5).ceil().max(0.0) as usize).min(len.saturating_sub(1));
            let mut w: Vec<f64> = (lo..=hi)
                .map(|k| (1.0 - ((k as f64 + 0.5) - centre).abs() / support).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            } else {
                // Unreachable for len >= 1 (the nearest pixel always has weight > 0), but keep
                // a defined result: nearest pixel.
                w = vec![1.0];
            }
            // Trim zero-weight taps at both ends so inner loops do no useless work.
            let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
            let last = w.iter().rposition(|&v| v > 0.0).unwrap_or(0);
            starts.push(lo + first);
            weights.push(w[first..=last].iter().map(|&v| v as f32).collect());
        }
        Taps { starts, weights }
    }
}

/// The square of a `src_w × src_h` frame the model sees: left, top and side in source pixels
/// (the centred 224/256 of the shorter side).
pub fn crop(src_w: usize, src_h: usize) -> (f64, f64, f64) {
    let side = src_w.min(src_h) as f64 * 224.0 / 256.0;
    (
        (src_w as f64 - side) / 2.0,
        (src_h as f64 - side) / 2.0,
        side,
    )
}

/// Reusable preprocessing plan for one source frame size and one model input size.
/// Build it once per camera mode; [`Plan::run`] then allocates nothing but a row buffer.
#[derive(Debug, Clone)]
pub struct Plan {
    src_w: usize,
    src_h: usize,
    size: usize,
    rows: Taps,
    cols: Taps,
    col_lo: usize,
    col_hi: usize,
}

impl Plan {
    /// Plan for `src_w × src_h` frames into a `size × size` input.
    pub fn new(src_w: usize, src_h: usize, size: usize) -> Self {
        let (x0, y0, side) = crop(src_w, src_h);
        let rows = Taps::new(src_h, y0, side, size);
        let cols = Taps::new(src_w, x0, side, size);
        let col_lo = cols.starts.iter().copied().min().unwrap_or(0);
        let col_hi = cols
            .starts
            .iter()
            .zip(&cols.weights)
            .map(|(s, w)| s + w.len())
            .max()
            .unwrap_or(0);
        Plan {
            src_w,
            src_h,
            size,
            rows,
            cols,
            col_lo,
            col_hi,
        }
    }

    /// Source frame size this plan was made for.
    pub fn source_size(&self) -> (usize, usize) {
        (self.src_w, self.src_h)
    }

    /// Resample packed RGB8 `rgb` (`src_w·src_h·3` bytes) into `out` (`3·size·size`, NCHW,
    /// scaled to [-1, 1]).
    pub fn run(&self, rgb: &[u8], out: &mut [f32]) {
        self.run_pixels(rgb, out);
    }

    /// [`Plan::run`] for float pixels (0–255, packed RGB): images being optimised
    /// (`teachcam dream`/`attack`) are float between steps.
    pub fn run_f32(&self, rgb: &[f32], out: &mut [f32]) {
        self.run_pixels(rgb, out);
    }

    fn run_pixels<P: Copy + Into<f32>>(&self, rgb: &[P], out: &mut [f32]) {
        let (w, s) = (self.src_w, self.size);
        assert_eq!(
            rgb.len(),
            w * self.src_h * 3,
            "frame size does not match the plan"
        );
        assert_eq!(
            out.len(),
            3 * s * s,
            "output tensor size does not match the plan"
        );
        let span = self.col_hi - self.col_lo;
        let mut acc = vec![0f32; span * 3];
        let plane = s * s;
        for i in 0..s {
            acc.iter_mut().for_each(|v| *v = 0.0);
            let y0 = self.rows.starts[i];
            for (dy, &wy) in self.rows.weights[i].iter().enumerate() {
                let row =
                    &rgb[((y0 + dy) * w + self.col_lo) * 3..((y0 + dy) * w + self.col_hi) * 3];
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += wy * p.into();
                }
            }
            for j in 0..s {
                let x0 = self.cols.starts[j] - self.col_lo;
                let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
                for (dx, &wx) in self.cols.weights[j].iter().enumerate() {
                    let p = &acc[(x0 + dx) * 3..(x0 + dx) * 3 + 3];
                    r += wx * p[0];
                    g += wx * p[1];
                    b += wx * p[2];
                }
                let o = i * s + j;
                out[o] = r / 127.5 - 1.0;
                out[plane + o] = g / 127.5 - 1.0;
                out[2 * plane + o] = b / 127.5 - 1.0;
            }
        }
    }

    /// The transpose of the linear part of [`Plan::run`]: add to `d_rgb` (packed RGB, source
    /// size) the gradient with respect to the pixels of a function whose gradient with
    /// respect to the model input is `d_out` (NCHW). Used to optimise real images in pixel
    /// space, so what is written is what `classify` reads.
    pub fn adjoint(&self, d_out: &[f32], d_rgb: &mut [f32]) {
        let (w, s) = (self.src_w, self.size);
        assert_eq!(
            d_rgb.len(),
            w * self.src_h * 3,
            "frame size does not match the plan"
        );
        assert_eq!(
            d_out.len(),
            3 * s * s,
            "gradient size does not match the plan"
        );
        let span = self.col_hi - self.col_lo;
        let mut acc = vec![0f32; span * 3];
        let plane = s * s;
        for i in 0..s {
            acc.iter_mut().for_each(|v| *v = 0.0);
            for j in 0..s {
                let o = i * s + j;
                let g = [d_out[o], d_out[plane + o], d_out[2 * plane + o]].map(|v| v / 127.5);
                let x0 = self.cols.starts[j] - self.col_lo;
                for (dx, &wx) in self.cols.weights[j].iter().enumerate() {
                    let p = &mut acc[(x0 + dx) * 3..(x0 + dx) * 3 + 3];
                    p[0] += wx * g[0];
                    p[1] += wx * g[1];
                    p[2] += wx * g[2];
                }
            }
            let y0 = self.rows.starts[i];
            for (dy, &wy) in self.rows.weights[i].iter().enumerate() {
                let row = &mut d_rgb
                    [((y0 + dy) * w + self.col_lo) * 3..((y0 + dy) * w + self.col_hi) * 3];
                for (d, &a) in row.iter_mut().zip(&acc) {
                    *d += wy * a;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_are_normalised_and_inside_the_source() {
        for (len, out) in [(640, 224), (100, 224), (224, 224), (3, 224), (5000, 160)] {
            let side = len as f64 * 224.0 / 256.0;
            let t = Taps::new(len, (len as f64 - side) / 2.0, side, out);
            for (s, w) in t.starts.iter().zip(&t.weights) {
                let sum: f32 = w.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "len {len}: sum {sum}");
                assert!(s + w.len() <= len);
            }
        }
    }

    #[test]
    fn uniform_frame_maps_to_uniform_tensor() {
        let (w, h) = (97, 61);
        let rgb: Vec<u8> = (0..w * h).flat_map(|_| [255u8, 0, 127]).collect();
        let plan = Plan::new(w, h, 32);
        let mut out = vec![0f32; 3 * 32 * 32];
        plan.run(&rgb, &mut out);
        let plane = 32 * 32;
        assert!(out[..plane].iter().all(|v| (v - 1.0).abs() < 1e-5));
        assert!(out[plane..2 * plane].iter().all(|v| (v + 1.0).abs() < 1e-5));
        assert!(
            out[2 * plane..]
                .iter()
                .all(|v| (v - (127.0 / 127.5 - 1.0)).abs() < 1e-5)
        );
    }

    #[test]
    fn adjoint_is_the_transpose_of_the_resampling() {
        // <P(x) + 1, v> = <x, Pᵀ(v)>: the law that makes pixel-space gradients right, for a
        // downscale, an upscale and an exact crop (256 → 224).
        let mut r = crate::rng::Rng::new(4);
        for (w, h, size) in [(97, 61, 32), (20, 30, 32), (256, 256, 224)] {
            let plan = Plan::new(w, h, size);
            let x: Vec<f32> = (0..w * h * 3).map(|_| r.f32() * 255.0).collect();
            let v: Vec<f32> = (0..3 * size * size).map(|_| r.normal()).collect();
            let mut y = vec![0f32; v.len()];
            plan.run_f32(&x, &mut y);
            let lhs: f64 = y.iter().zip(&v).map(|(a, b)| ((a + 1.0) * b) as f64).sum();
            let mut d = vec![0f32; x.len()];
            plan.adjoint(&v, &mut d);
            let rhs: f64 = x.iter().zip(&d).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * (1.0 + lhs.abs()),
                "{w}x{h}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn float_and_byte_pixels_give_the_same_tensor() {
        let (w, h) = (50, 40);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 256) as u8).collect();
        let f: Vec<f32> = rgb.iter().map(|&v| v as f32).collect();
        let plan = Plan::new(w, h, 16);
        let (mut a, mut b) = (vec![0f32; 3 * 256], vec![0f32; 3 * 256]);
        plan.run(&rgb, &mut a);
        plan.run_f32(&f, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn crop_is_centred_and_keeps_orientation() {
        // Left half black, right half white: the output must be dark on the left, bright on
        // the right, and symmetric around the centre column.
        let (w, h) = (200, 100);
        let rgb: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).flat_map(|x| if x < w / 2 { [0u8; 3] } else { [255u8; 3] }))
            .collect();
        let plan = Plan::new(w, h, 16);
        let mut out = vec![0f32; 3 * 16 * 16];
        plan.run(&rgb, &mut out);
        assert!(out[0] < -0.99 && out[15] > 0.99);
        for j in 0..8 {
            assert!((out[j] + out[15 - j]).abs() < 1e-4, "column {j}");
        }
    }
}
