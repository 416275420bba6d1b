//! Integer kernels for quantised convolution layers, NHWC `u8` activations, `i8` weights.
//!
//! Arithmetic contract (the one onnxruntime's CPU kernels implement, and which the fixtures in
//! `tests/fixtures/qnn/` pin): a layer's `i32` accumulator is the exact sum of
//! `(x - x_zero) * w` plus the `i32` bias; it is converted to `f32`, multiplied by the `f32`
//! output scale `x_scale * w_scale / y_scale` (computed in that order), clamped to the `u8`
//! range around the output zero point, rounded half to even and offset by the zero point.
//! Float ops that quantise or dequantise follow ONNX `QuantizeLinear` / `DequantizeLinear`
//! (`round_even(x / scale) + zero`, `(q - zero) * scale`).
//!
//! Every kernel has a portable version (plain Rust that the compiler vectorises on any target);
//! the pointwise convolution also has an x86-64 VNNI version picked at run time
//! ([`super::x86`]). The portable versions are what run on ARM.

/// The output scale of a quantised convolution for one output channel, computed in the same
/// order as onnxruntime (`x_scale * w_scale / y_scale`).
pub fn output_scale(x_scale: f32, w_scale: f32, y_scale: f32) -> f32 {
    x_scale * w_scale / y_scale
}

/// Round half to even for |v| ≤ 2^22: adding and subtracting 1.5·2^23 leaves no fraction
/// bits, so the FPU's default rounding (to nearest, ties to even) does the rounding. Same
/// result as `f32::round_ties_even` on that range (tested), but two vector adds on every
/// target, where `round_ties_even` is a libm call unless the CPU has a rounding instruction
/// enabled at compile time (SSE4.1 is not in the x86-64 baseline).
#[inline(always)]
pub fn round_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Convert a value already clamped to the `u8` range (and so finite: `f32::max` drops NaN).
#[inline(always)]
fn to_i32(v: f32) -> i32 {
    debug_assert!(v.is_finite() && v.abs() <= 256.0);
    // SAFETY: finite and within i32 range (clamped by the caller).
    unsafe { v.to_int_unchecked::<i32>() }
}

/// Requantise one accumulator (bias already added) to `u8`.
#[inline(always)]
pub fn requant(acc: i32, scale: f32, zero: i32) -> u8 {
    let lo = -zero as f32;
    let hi = (255 - zero) as f32;
    let v = round_even_small((acc as f32 * scale).max(lo).min(hi));
    (to_i32(v) + zero) as u8
}

/// ONNX `QuantizeLinear` of one value to `u8`.
#[inline(always)]
pub fn quantize(x: f32, scale: f32, zero: i32) -> u8 {
    let lo = -zero as f32;
    let hi = (255 - zero) as f32;
    let v = round_even_small((x / scale).max(lo).min(hi));
    (to_i32(v) + zero) as u8
}

/// ONNX `DequantizeLinear` of one `u8` value.
#[inline(always)]
pub fn dequantize(q: u8, scale: f32, zero: i32) -> f32 {
    (q as i32 - zero) as f32 * scale
}

/// Quantisation of one tensor: scale and zero point (per tensor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    /// Real value of one step.
    pub scale: f32,
    /// The `u8` code of real zero.
    pub zero: i32,
}

/// Float NCHW (batch 1) → `u8` NHWC, quantising on the way (the entry of the int8 section).
pub fn quantize_nchw_to_nhwc(x: &[f32], c: usize, hw: usize, q: QParams, out: &mut [u8]) {
    assert_eq!(x.len(), c * hw, "input length");
    assert_eq!(out.len(), c * hw, "output length");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { quantize_transpose_avx2(x, c, hw, q, out) };
        return;
    }
    quantize_transpose(x, c, hw, q, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn quantize_transpose_avx2(x: &[f32], c: usize, hw: usize, q: QParams, out: &mut [u8]) {
    quantize_transpose(x, c, hw, q, out)
}

/// Quantise a tile of each channel's row into a small buffer (contiguous, vectorised), then
/// scatter the tile into NHWC order.
#[inline(always)]
fn quantize_transpose(x: &[f32], c: usize, hw: usize, q: QParams, out: &mut [u8]) {
    const TILE: usize = 64;
    let mut tile = [0u8; TILE];
    for p0 in (0..hw).step_by(TILE) {
        let len = (hw - p0).min(TILE);
        for ch in 0..c {
            let row = &x[ch * hw + p0..ch * hw + p0 + len];
            for (t, &v) in tile.iter_mut().zip(row) {
                *t = quantize(v, q.scale, q.zero);
            }
            for (i, &t) in tile[..len].iter().enumerate() {
                out[(p0 + i) * c + ch] = t;
            }
        }
    }
}

/// One operand of a residual add: an int8 tensor (dequantised on the fly) or a float one
/// (the unquantised sum of an earlier add, which QOperator graphs pass on in float).
#[derive(Debug, Clone, Copy)]
pub enum Operand<'a> {
    /// `u8` values and their quantisation.
    Int8(&'a [u8], QParams),
    /// Float values.
    Float(&'a [f32]),
}

impl Operand<'_> {
    fn len(&self) -> usize {
        match self {
            Operand::Int8(x, _) => x.len(),
            Operand::Float(x) => x.len(),
        }
    }

    #[inline(always)]
    fn get(&self, i: usize) -> f32 {
        match self {
            Operand::Int8(x, q) => dequantize(x[i], q.scale, q.zero),
            Operand::Float(x) => x[i],
        }
    }
}

/// Element-wise float `Add` of two operands, as `DequantizeLinear` + `Add` compute it.
pub fn add(a: Operand<'_>, b: Operand<'_>, out: &mut [f32]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "add: lengths differ"
    );
    match (a, b) {
        (Operand::Int8(x, qa), Operand::Int8(y, qb)) => {
            for ((o, &u), &v) in out.iter_mut().zip(x).zip(y) {
                *o = dequantize(u, qa.scale, qa.zero) + dequantize(v, qb.scale, qb.zero);
            }
        }
        (Operand::Float(x), Operand::Int8(y, qb)) => {
            for ((o, &u), &v) in out.iter_mut().zip(x).zip(y) {
                *o = u + dequantize(v, qb.scale, qb.zero);
            }
        }
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = a.get(i) + b.get(i);
            }
        }
    }
}

/// `QuantizeLinear` of a float tensor without changing its layout.
pub fn quantize_slice(x: &[f32], q: QParams, out: &mut [u8]) {
    assert_eq!(x.len(), out.len(), "quantize: lengths differ");
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize(v, q.scale, q.zero);
    }
}

/// Dequantise and average over pixels: NHWC `u8` (batch 1) → `c` floats. The pixel sum is
/// exact in integers; the result differs from "dequantise, then float mean" only by float
/// rounding of the sum (which that order accumulates and this one does not).
pub fn dequantize_mean(x: &[u8], c: usize, q: QParams, out: &mut [f32]) {
    assert_eq!(out.len(), c);
    assert!(
        c > 0 && x.len().is_multiple_of(c),
        "mean: length is not a multiple of c"
    );
    let hw = x.len() / c;
    let mut sums = vec![0i64; c];
    for px in x.chunks_exact(c) {
        for (s, &v) in sums.iter_mut().zip(px) {
            *s += v as i64;
        }
    }
    for (o, s) in out.iter_mut().zip(sums) {
        let centred = s - q.zero as i64 * hw as i64;
        *o = centred as f32 * q.scale / hw as f32;
    }
}

/// A 1×1 convolution (stride 1, no padding): a `[pixels × k] · [k × n]` product with the
/// weights' row sums folded into the bias and requantisation in the epilogue.
#[derive(Debug, Clone)]
pub struct Pointwise {
    /// Input channels.
    pub k: usize,
    /// Output channels.
    pub n: usize,
    /// Weights, `[n][k]`.
    w: Vec<i8>,
    /// `bias - x_zero * Σ_k w`, per output channel.
    bias: Vec<i32>,
    /// Output scale per output channel.
    scale: Vec<f32>,
    /// Output zero point.
    y_zero: i32,
    /// VNNI packing, when the CPU has it and `k` is a multiple of 4.
    #[cfg(target_arch = "x86_64")]
    vnni: Option<super::x86::PackedPointwise>,
}

impl Pointwise {
    /// Build from ONNX-layout weights `[n][k]` (symmetric: weight zero points must be 0),
    /// `i32` bias, per-channel output scales and the input/output zero points.
    pub fn new(
        n: usize,
        k: usize,
        w: Vec<i8>,
        bias: Vec<i32>,
        scale: Vec<f32>,
        x_zero: i32,
        y_zero: i32,
    ) -> Self {
        assert_eq!(w.len(), n * k, "pointwise weights");
        assert_eq!(bias.len(), n, "pointwise bias");
        assert_eq!(scale.len(), n, "pointwise scales");
        let bias: Vec<i32> = (0..n)
            .map(|o| {
                let sum: i32 = w[o * k..(o + 1) * k].iter().map(|&v| v as i32).sum();
                bias[o] - x_zero * sum
            })
            .collect();
        #[cfg(target_arch = "x86_64")]
        let vnni = super::x86::PackedPointwise::new(n, k, &w, &bias, &scale, y_zero);
        Pointwise {
            k,
            n,
            w,
            bias,
            scale,
            y_zero,
            #[cfg(target_arch = "x86_64")]
            vnni,
        }
    }

    /// Which implementation [`Pointwise::run`] uses on this CPU.
    pub fn kernel_name(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = &self.vnni {
            return v.name();
        }
        "portable"
    }

    /// `x`: `[pixels][k]`; `out`: `[pixels][n]`.
    pub fn run(&self, x: &[u8], out: &mut [u8]) {
        assert!(x.len().is_multiple_of(self.k), "pointwise input length");
        let pixels = x.len() / self.k;
        assert_eq!(out.len(), pixels * self.n, "pointwise output length");
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = &self.vnni {
            v.run(x, pixels, out);
            return;
        }
        self.run_portable(x, out);
    }

    /// The portable implementation (also the reference the VNNI kernel is tested against).
    pub fn run_portable(&self, x: &[u8], out: &mut [u8]) {
        let (k, n) = (self.k, self.n);
        for (row, o) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
            for (j, oj) in o.iter_mut().enumerate() {
                let w = &self.w[j * k..(j + 1) * k];
                let dot: i32 = row.iter().zip(w).map(|(&a, &b)| a as i32 * b as i32).sum();
                *oj = requant(self.bias[j] + dot, self.scale[j], self.y_zero);
            }
        }
    }
}

/// A depthwise convolution (one filter per channel), any odd or even kernel, any stride,
/// explicit padding, computed directly on NHWC (no im2col).
#[derive(Debug, Clone)]
pub struct Depthwise {
    /// Channels.
    pub c: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Strides (rows, columns).
    pub stride: (usize, usize),
    /// Padding: top, left, bottom, right (ONNX order is top, left, bottom, right).
    pub pads: [usize; 4],
    /// Weights minus their zero point, `[tap][c]`.
    pub(super) w: Vec<i16>,
    pub(super) bias: Vec<i32>,
    pub(super) scale: Vec<f32>,
    pub(super) x_zero: i32,
    pub(super) y_zero: i32,
    #[cfg(target_arch = "x86_64")]
    avx2: Option<super::x86::PackedDepthwise>,
}

impl Depthwise {
    /// Build from ONNX-layout weights `[c][1][kh][kw]` with per-channel weight zero points.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        pads: [usize; 4],
        w: &[i8],
        w_zero: &[i32],
        bias: Vec<i32>,
        scale: Vec<f32>,
        x_zero: i32,
        y_zero: i32,
    ) -> Self {
        let taps = kernel.0 * kernel.1;
        assert_eq!(w.len(), c * taps, "depthwise weights");
        assert_eq!(w_zero.len(), c, "depthwise weight zero points");
        assert!(bias.len() == c && scale.len() == c, "depthwise bias/scales");
        assert!(stride.0 > 0 && stride.1 > 0, "depthwise stride");
        let mut packed = vec![0i16; taps * c];
        for ch in 0..c {
            for t in 0..taps {
                packed[t * c + ch] = (w[ch * taps + t] as i32 - w_zero[ch]) as i16;
            }
        }
        #[allow(unused_mut)]
        let mut d = Depthwise {
            c,
            kernel,
            stride,
            pads,
            w: packed,
            bias,
            scale,
            x_zero,
            y_zero,
            #[cfg(target_arch = "x86_64")]
            avx2: None,
        };
        #[cfg(target_arch = "x86_64")]
        {
            d.avx2 = super::x86::PackedDepthwise::new(&d);
        }
        d
    }

    /// Output height and width for an `h × w` input.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let oh = (h + self.pads[0] + self.pads[2] - self.kernel.0) / self.stride.0 + 1;
        let ow = (w + self.pads[1] + self.pads[3] - self.kernel.1) / self.stride.1 + 1;
        (oh, ow)
    }

    /// `x`: `[h][w][c]`; `out`: `[oh][ow][c]`.
    pub fn run(&self, x: &[u8], h: usize, w: usize, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = &self.avx2 {
            let (oh, ow) = self.out_size(h, w);
            assert_eq!(x.len(), h * w * self.c, "depthwise input length");
            assert_eq!(out.len(), oh * ow * self.c, "depthwise output length");
            k.run(self, x, h, w, oh, ow, out);
            return;
        }
        self.run_portable(x, h, w, out);
    }

    /// Which implementation [`Depthwise::run`] uses on this CPU.
    pub fn kernel_name(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if self.avx2.is_some() {
            return "avx2";
        }
        "portable"
    }

    /// The portable implementation (also the reference the AVX2 kernel is tested against).
    pub fn run_portable(&self, x: &[u8], h: usize, w: usize, out: &mut [u8]) {
        let c = self.c;
        assert_eq!(x.len(), h * w * c, "depthwise input length");
        let (oh, ow) = self.out_size(h, w);
        assert_eq!(out.len(), oh * ow * c, "depthwise output length");
        let (kh, kw) = self.kernel;
        let xz = self.x_zero as i16;
        let mut acc = vec![0i32; c];
        for oy in 0..oh {
            for ox in 0..ow {
                acc.copy_from_slice(&self.bias);
                for ky in 0..kh {
                    let iy = (oy * self.stride.0 + ky) as isize - self.pads[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * self.stride.1 + kx) as isize - self.pads[1] as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let base = (iy as usize * w + ix as usize) * c;
                        let px = &x[base..base + c];
                        let wt = &self.w[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                        for ((a, &v), &f) in acc.iter_mut().zip(px).zip(wt) {
                            *a += ((v as i16 - xz) as i32) * f as i32;
                        }
                    }
                }
                let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                for ((q, &a), &s) in o.iter_mut().zip(&acc).zip(&self.scale) {
                    *q = requant(a, s, self.y_zero);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_rounding_equals_round_ties_even() {
        let mut v = -300.0f32;
        while v <= 300.0 {
            for x in [v, v + 0.5, v + 0.499_999_97, v + 0.500_000_06, -v - 0.5] {
                assert_eq!(round_even_small(x), x.round_ties_even(), "{x}");
            }
            v += 0.25;
        }
    }

    #[test]
    fn requant_rounds_half_to_even_and_saturates() {
        assert_eq!(requant(5, 0.5, 10), 12); // 2.5 -> 2
        assert_eq!(requant(7, 0.5, 10), 14); // 3.5 -> 4
        assert_eq!(requant(-100, 1.0, 10), 0);
        assert_eq!(requant(1000, 1.0, 10), 255);
        assert_eq!(quantize(-0.5, 1.0, 0), 0);
        assert_eq!(quantize(1.5, 1.0, 0), 2);
        assert_eq!(quantize(0.5, 1.0, 3), 3);
    }

    #[test]
    fn depthwise_equals_a_naive_convolution() {
        // 2 channels, 4x5 input, 3x3 kernel, stride 2, TF-style padding (0,0,1,1).
        let (c, h, w) = (2usize, 4usize, 5usize);
        let x: Vec<u8> = (0..h * w * c).map(|i| (i * 37 % 251) as u8).collect();
        let wt: Vec<i8> = (0..c * 9)
            .map(|i| (i as i32 * 29 % 255 - 127) as i8)
            .collect();
        let d = Depthwise::new(
            c,
            (3, 3),
            (2, 2),
            [0, 0, 1, 1],
            &wt,
            &[0, 3],
            vec![100, -50],
            vec![0.01, 0.02],
            7,
            128,
        );
        let (oh, ow) = d.out_size(h, w);
        assert_eq!((oh, ow), (2, 2));
        let mut out = vec![0u8; oh * ow * c];
        d.run(&x, h, w, &mut out);
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut acc = [100, -50][ch];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy * 2 + ky) as i32, (ox * 2 + kx) as i32);
                            if iy < h as i32 && ix < w as i32 {
                                let v = x[(iy as usize * w + ix as usize) * c + ch] as i32 - 7;
                                acc += v * (wt[ch * 9 + ky * 3 + kx] as i32 - [0, 3][ch]);
                            }
                        }
                    }
                    let want = requant(acc, [0.01, 0.02][ch], 128);
                    assert_eq!(out[(oy * ow + ox) * c + ch], want, "at {oy},{ox},{ch}");
                }
            }
        }
    }

    #[test]
    fn depthwise_dispatch_equals_portable() {
        for &(c, h, w, stride, pads) in &[
            (32usize, 7usize, 9usize, 1usize, [1usize, 1, 1, 1]),
            (48, 8, 5, 2, [0, 0, 1, 1]),
            (16, 3, 3, 2, [1, 1, 1, 1]),
        ] {
            let x: Vec<u8> = (0..h * w * c).map(|i| (i * 113 % 256) as u8).collect();
            let wt: Vec<i8> = (0..c * 9)
                .map(|i| (i as i32 * 53 % 255 - 127) as i8)
                .collect();
            let d = Depthwise::new(
                c,
                (3, 3),
                (stride, stride),
                pads,
                &wt,
                &vec![0; c],
                (0..c as i32).map(|j| j * 311 - 4000).collect(),
                (0..c).map(|j| 0.001 + j as f32 * 1e-5).collect(),
                37,
                90,
            );
            let (oh, ow) = d.out_size(h, w);
            let (mut a, mut b) = (vec![0u8; oh * ow * c], vec![0u8; oh * ow * c]);
            d.run(&x, h, w, &mut a);
            d.run_portable(&x, h, w, &mut b);
            assert_eq!(a, b, "c {c} {h}x{w} stride {stride} ({})", d.kernel_name());
            assert!(a.iter().any(|&v| v != a[0]), "degenerate test data");
        }
    }

    #[test]
    fn pointwise_dispatch_equals_portable() {
        // Shapes that exercise partial row blocks and partial column panels.
        for &(pixels, k, n) in &[
            (1usize, 4usize, 8usize),
            (13, 16, 24),
            (7, 40, 36),
            (50, 96, 16),
        ] {
            let x: Vec<u8> = (0..pixels * k).map(|i| (i * 131 % 256) as u8).collect();
            let w: Vec<i8> = (0..n * k)
                .map(|i| (i as i32 * 71 % 255 - 127) as i8)
                .collect();
            let bias: Vec<i32> = (0..n as i32).map(|j| j * 997 - 5000).collect();
            let scale: Vec<f32> = (0..n).map(|j| 0.0007 + j as f32 * 1e-5).collect();
            let p = Pointwise::new(n, k, w, bias, scale, 9, 120);
            let mut a = vec![0u8; pixels * n];
            let mut b = vec![0u8; pixels * n];
            p.run(&x, &mut a);
            p.run_portable(&x, &mut b);
            assert_eq!(a, b, "pixels {pixels} k {k} n {n} ({})", p.kernel_name());
            assert!(a.iter().any(|&v| v != a[0]), "degenerate test data");
        }
    }

    #[test]
    fn mean_and_add_follow_the_onnx_definitions() {
        let q = QParams {
            scale: 0.5,
            zero: 10,
        };
        let mut m = [0f32; 2];
        dequantize_mean(&[10, 20, 12, 30], 2, q, &mut m);
        assert_eq!(m, [0.5, 7.5]);
        let mut f = [0f32; 3];
        add(
            Operand::Int8(&[10, 14, 255], q),
            Operand::Int8(&[11, 10, 255], q),
            &mut f,
        );
        assert_eq!(f, [0.5, 2.0, 245.0]);
        let mut g = [0f32; 3];
        add(Operand::Float(&f), Operand::Int8(&[12, 10, 10], q), &mut g);
        assert_eq!(g, [1.5, 2.0, 245.0]);
        let mut o = [0u8; 3];
        let qy = QParams {
            scale: 1.0,
            zero: 0,
        };
        quantize_slice(&[0.5, 1.5, 300.0], qy, &mut o);
        assert_eq!(o, [0, 2, 255]); // halves round to even; saturates
    }
}
