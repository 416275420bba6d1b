//! The layer descriptions every int8 kernel shares, apart from the code that picks a kernel:
//! the parameters of a 1×1, depthwise or stem layer as the ONNX graph gives them, and what
//! each kernel keeps of them besides its own packing ([`PwCommon`], [`DwCommon`], the stem's
//! [`Refs`] and [`Blocks`]).
//!
//! The dispatchers ([`super::pointwise`], [`super::depthwise`], [`super::stem`]) and the
//! instruction-set kernels (`x86`, `neon`, `sdot`, `arm32`, [`super::tractmm`]) both read
//! these types; keeping them here lets the dispatchers depend on the kernels and the kernels
//! on this module only, with no import circle.
//!
//! Must not: choose kernels or run layers.

use super::arith::QParams;

/// What a 1×1 layer is made of, as the ONNX graph gives it.
#[derive(Debug, Clone, Copy)]
pub struct PointwiseParams<'a> {
    /// Output channels.
    pub n: usize,
    /// Input channels.
    pub k: usize,
    /// Weights `[n][k]`, symmetric (zero point 0).
    pub w: &'a [i8],
    /// `i32` bias per output channel.
    pub bias: &'a [i32],
    /// Output scale per output channel ([`super::arith::output_scale`]).
    pub scale: &'a [f32],
    /// Activation zero point.
    pub x_zero: i32,
    /// Output zero point.
    pub y_zero: i32,
}

impl<'a> PointwiseParams<'a> {
    pub(super) fn check(&self) -> Result<(), String> {
        if self.n == 0 || self.k == 0 {
            return Err("1x1 layer with no channels".into());
        }
        if self.w.len() != self.n * self.k
            || self.bias.len() != self.n
            || self.scale.len() != self.n
        {
            return Err(format!(
                "1x1 layer {}x{}: {} weights, {} biases, {} scales",
                self.k,
                self.n,
                self.w.len(),
                self.bias.len(),
                self.scale.len()
            ));
        }
        if !(0..=255).contains(&self.x_zero) || !(0..=255).contains(&self.y_zero) {
            return Err("1x1 layer: zero points must be u8".into());
        }
        super::arith::check_scales(self.scale)
    }

    /// `bias - x_zero·Σ_k w`: the bias for raw `u8` activations.
    pub(super) fn folded_bias(&self) -> Vec<i32> {
        (0..self.n)
            .map(|o| {
                let sum: i32 = self.w[o * self.k..(o + 1) * self.k]
                    .iter()
                    .map(|&v| v as i32)
                    .sum();
                self.bias[o] - self.x_zero * sum
            })
            .collect()
    }

    /// The same layer on raw `u8` activations: `bias` is [`Self::folded_bias`] and the
    /// activation zero point 0. Every kernel is given this form.
    pub(super) fn with_folded_bias<'b>(&self, bias: &'b [i32]) -> PointwiseParams<'b>
    where
        'a: 'b,
    {
        PointwiseParams {
            bias,
            x_zero: 0,
            ..*self
        }
    }
}

/// What every 1×1 kernel keeps besides its packed weights: the shape and the requantisation.
#[derive(Debug, Clone)]
pub(crate) struct PwCommon {
    /// Input channels.
    pub k: usize,
    /// Output channels.
    pub n: usize,
    /// Bias per output channel, zero past `n`.
    pub bias: Vec<i32>,
    /// Output scale per output channel, zero past `n`.
    pub scale: Vec<f32>,
    /// Output zero point.
    pub y_zero: i32,
}

impl PwCommon {
    /// `l`'s shape and epilogue (`l` as [`PointwiseParams::with_folded_bias`] gives it), bias
    /// and scales padded with zeros to `padded` channels (whole panels of the kernel). A kernel
    /// that multiplies `x - shift` instead of the raw `u8` activation `x` (`i8` activations:
    /// `x ^ 0x80`, shift 128) passes `shift`, and `shift·Σw` joins the bias.
    pub(crate) fn new(l: &PointwiseParams, padded: usize, shift: i32) -> Self {
        let (k, n) = (l.k, l.n);
        assert!(l.w.len() == n * k && l.bias.len() == n && l.scale.len() == n);
        assert!(
            l.x_zero == 0 && padded >= n,
            "a kernel takes the folded layer"
        );
        let mut bias = l.bias.to_vec();
        if shift != 0 {
            for (b, w) in bias.iter_mut().zip(l.w.chunks_exact(k)) {
                *b += shift * w.iter().map(|&v| v as i32).sum::<i32>();
            }
        }
        bias.resize(padded, 0);
        let mut scale = l.scale.to_vec();
        scale.resize(padded, 0.0);
        PwCommon {
            k,
            n,
            bias,
            scale,
            y_zero: l.y_zero,
        }
    }

    /// Pixels in `x` and panels of `panel` channels, after checking the lengths a kernel's
    /// tiles rely on: `x` is `[pixels][k]`, `out` `[pixels][n]`, and the bias and scales cover
    /// whole panels. Panics otherwise (a caller's bug, never input).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub(crate) fn checked_tiles(&self, x: &[u8], out: &[u8], panel: usize) -> (usize, usize) {
        let pixels = x.len() / self.k;
        assert!(x.len() == pixels * self.k && out.len() == pixels * self.n);
        let panels = self.n.div_ceil(panel);
        assert!(self.bias.len() == panels * panel && self.scale.len() == panels * panel);
        (pixels, panels)
    }
}

/// Shape of a depthwise layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwGeom {
    /// Channels.
    pub c: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Strides (rows, columns).
    pub stride: (usize, usize),
    /// Padding: top, left, bottom, right (ONNX order).
    pub pads: [usize; 4],
}

impl DwGeom {
    /// Output height and width for an `h × w` input (`None` when the kernel does not fit).
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let ph = h + self.pads[0] + self.pads[2];
        let pw = w + self.pads[1] + self.pads[3];
        if ph < self.kernel.0 || pw < self.kernel.1 {
            return None;
        }
        Some((
            (ph - self.kernel.0) / self.stride.0 + 1,
            (pw - self.kernel.1) / self.stride.1 + 1,
        ))
    }

    /// Taps per channel.
    pub fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    /// Output size of a run on `x` (`[h][w][c]`) for the output rows `rows` into `out`,
    /// after checking every length a kernel's unsafe code relies on: `x` holds a whole image,
    /// `out` exactly those rows (`rows` within the output), the weights `weights` values, and
    /// each per-channel array (`bias`, `scale`, pad row, …) `c` values. Panics otherwise (a
    /// caller's bug, never input: shapes are checked at load).
    pub fn checked_run(
        &self,
        x: &[u8],
        (h, w): (usize, usize),
        (rows, out): (&std::ops::Range<usize>, &[u8]),
        (weights, expected_weights): (usize, usize),
        per_channel: &[usize],
    ) -> (usize, usize) {
        let c = self.c;
        let (oh, ow) = self.out_size(h, w).expect("input smaller than the kernel");
        assert!(rows.start <= rows.end && rows.end <= oh);
        assert!(x.len() == h * w * c && out.len() == rows.len() * ow * c);
        assert!(weights == expected_weights && per_channel.iter().all(|&n| n == c));
        (oh, ow)
    }

    /// The input row (`c` values) each tap of output pixel `(oy, ox)` reads, tap by tap in
    /// `[ky][kx]` order: a slice of `x` (`[h][w][c]`), or `pad` where the tap falls in the
    /// padding. The SIMD kernels keep these as row pointers.
    pub fn tap_rows<'a>(
        &self,
        x: &'a [u8],
        (h, w): (usize, usize),
        (oy, ox): (usize, usize),
        pad: &'a [u8],
        mut put: impl FnMut(usize, &'a [u8]),
    ) {
        let (c, (kh, kw)) = (self.c, self.kernel);
        for ky in 0..kh {
            let iy = (oy * self.stride.0 + ky) as isize - self.pads[0] as isize;
            for kx in 0..kw {
                let ix = (ox * self.stride.1 + kx) as isize - self.pads[1] as isize;
                let inside = iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize;
                put(
                    ky * kw + kx,
                    if inside {
                        &x[(iy as usize * w + ix as usize) * c..][..c]
                    } else {
                        pad
                    },
                );
            }
        }
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if self.c == 0 || self.taps() == 0 || self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(format!("depthwise layer with an empty shape: {self:?}"));
        }
        if self.pads[0] >= self.kernel.0
            || self.pads[2] >= self.kernel.0
            || self.pads[1] >= self.kernel.1
            || self.pads[3] >= self.kernel.1
        {
            // Every output then reads at least one real pixel; MobileNets never pad more.
            return Err(format!(
                "depthwise padding as large as the kernel: {self:?}"
            ));
        }
        Ok(())
    }
}

/// What a depthwise layer is made of, as the ONNX graph gives it.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseParams<'a> {
    /// Shape.
    pub geom: DwGeom,
    /// Weights `[c][kh][kw]` (ONNX `[c][1][kh][kw]`).
    pub w: &'a [i8],
    /// Weight zero point per channel.
    pub w_zero: &'a [i32],
    /// `i32` bias per channel.
    pub bias: &'a [i32],
    /// Output scale per channel.
    pub scale: &'a [f32],
    /// Activation zero point.
    pub x_zero: i32,
    /// Output zero point.
    pub y_zero: i32,
}

impl DepthwiseParams<'_> {
    pub(super) fn check(&self) -> Result<(), String> {
        self.geom.check()?;
        let c = self.geom.c;
        if self.w.len() != c * self.geom.taps()
            || self.w_zero.len() != c
            || self.bias.len() != c
            || self.scale.len() != c
        {
            return Err(format!(
                "depthwise layer of {c} channels: {} weights, {} zero points, {} biases, {} scales",
                self.w.len(),
                self.w_zero.len(),
                self.bias.len(),
                self.scale.len()
            ));
        }
        if !(0..=255).contains(&self.x_zero) || !(0..=255).contains(&self.y_zero) {
            return Err("depthwise layer: zero points must be u8".into());
        }
        if self.w_zero.iter().any(|z| !(-128..=127).contains(z)) {
            return Err("depthwise layer: weight zero points must be i8".into());
        }
        super::arith::check_scales(self.scale)
    }

    /// Weights minus their zero points, `[tap][c]` (each fits `i16`).
    pub(crate) fn taps_by_channel(&self) -> Vec<i16> {
        let (c, taps) = (self.geom.c, self.geom.taps());
        let mut out = vec![0i16; taps * c];
        for ch in 0..c {
            for t in 0..taps {
                out[t * c + ch] = (self.w[ch * taps + t] as i32 - self.w_zero[ch]) as i16;
            }
        }
        out
    }

    /// `bias - x_zero·Σ_taps w` per channel, for kernels that read raw `u8` activations.
    pub(super) fn folded_bias(&self, taps_by_channel: &[i16]) -> Vec<i32> {
        let c = self.geom.c;
        (0..c)
            .map(|ch| {
                let sum: i32 = (0..self.geom.taps())
                    .map(|t| taps_by_channel[t * c + ch] as i32)
                    .sum();
                self.bias[ch] - self.x_zero * sum
            })
            .collect()
    }
}

/// What every SIMD depthwise kernel keeps: they read raw `u8` activations, with the
/// activation zero point folded into the bias and a pad row of `x_zero` bytes (module doc).
#[derive(Debug, Clone)]
pub(crate) struct DwCommon {
    /// Shape.
    pub geom: DwGeom,
    /// Weights minus their zero points: `[tap][c]` ([`DepthwiseParams::taps_by_channel`]),
    /// or the kernel's own packing of them.
    pub w: Vec<i16>,
    /// Folded bias (`bias - x_zero·Σw`) per channel.
    pub bias: Vec<i32>,
    /// Output scale per channel.
    pub scale: Vec<f32>,
    /// One pixel of `x_zero` bytes, read for taps in the padding.
    pub pad: Vec<u8>,
    /// Output zero point.
    pub y_zero: i32,
}

impl DwCommon {
    /// `p` with `w` its [`DepthwiseParams::taps_by_channel`] (`p` checked).
    pub(super) fn new(p: &DepthwiseParams, w: Vec<i16>) -> Self {
        let c = p.geom.c;
        assert!(w.len() == p.geom.taps() * c && p.bias.len() == c && p.scale.len() == c);
        DwCommon {
            geom: p.geom,
            bias: p.folded_bias(&w),
            w,
            scale: p.scale.to_vec(),
            pad: vec![p.x_zero as u8; c],
            y_zero: p.y_zero,
        }
    }

    /// [`DwGeom::checked_run`] on this kernel's arrays, its packed weights being `weights`
    /// values: the output size, every length the kernel's unsafe code relies on checked.
    pub fn checked_run(
        &self,
        x: &[u8],
        (h, w): (usize, usize),
        out: (&std::ops::Range<usize>, &[u8]),
        weights: usize,
    ) -> (usize, usize) {
        self.geom.checked_run(
            x,
            (h, w),
            out,
            (self.w.len(), weights),
            &[self.bias.len(), self.scale.len(), self.pad.len()],
        )
    }
}

/// What the inner kernels read: the stem's weights and constants.
#[derive(Clone, Copy)]
pub(crate) struct Refs<'a> {
    /// Channels.
    pub c: usize,
    /// Convolution weights `[ky][kx][ci][c]`.
    pub conv_w: &'a [f32],
    /// Convolution bias.
    pub conv_b: &'a [f32],
    /// First clip.
    pub clip1: (f32, f32),
    /// Depthwise weights `[tap][c]`.
    pub dw_w: &'a [f32],
    /// Depthwise bias.
    pub dw_b: &'a [f32],
    /// Second clip.
    pub clip2: (f32, f32),
    /// Output quantisation.
    pub q: QParams,
}

/// One convolution output row's input, as [`Blocks::conv_row`] reads it: the padded NHWC
/// input rows under the kernel (one per kernel row, each `cin` floats a column from the
/// padded left edge); output column `ox`'s patch starts at column `ox · sx` of each.
#[derive(Clone, Copy)]
pub(crate) struct ConvRow<'a> {
    /// The kernel's input rows.
    pub rows: &'a [&'a [f32]],
    /// Input channels.
    pub cin: usize,
    /// Kernel width.
    pub kw: usize,
    /// Column stride.
    pub sx: usize,
    /// Output columns.
    pub cols: usize,
}

/// One depthwise output row's input, as [`Blocks::dw_row`] reads it: the convolution rows
/// under the kernel (one per kernel row, `c` floats a column, the depthwise padding included
/// as zeros); output column `ox` reads columns `ox · sx ..` of each.
#[derive(Clone, Copy)]
pub(crate) struct DwRow<'a> {
    /// The kernel's input rows.
    pub rows: &'a [&'a [f32]],
    /// Kernel width.
    pub kw: usize,
    /// Column stride.
    pub sx: usize,
    /// Output columns.
    pub cols: usize,
}

/// Four vector loads of a block's accumulators from `$b` (an array of 4 × `$w` floats) with
/// the ISA's unaligned load `$load`: the stem kernels' bias set-up, written once. It expands
/// to the four loads as they were written out before (the stem measured the same with it).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! load4 {
    ($load:ident, $b:expr, $w:expr) => {
        [
            $load($b.as_ptr()),
            $load($b.as_ptr().add($w)),
            $load($b.as_ptr().add(2 * $w)),
            $load($b.as_ptr().add(3 * $w)),
        ]
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use load4;

/// The stem's two inner kernels for one instruction set, `B` channels of one pixel at a time.
/// Implementations index the slices they are given (so a wrong size panics, never reads out
/// of bounds) and may assume their instruction set.
pub(crate) trait Blocks {
    /// Channels per call.
    const B: usize;
    /// Convolution, channels `c0..c0 + B`: `o = clip1(bias + Σ_t patch_t · w_t)`, the patch
    /// given as one slice per kernel row (the weights run over them in order).
    ///
    /// # Safety
    /// The CPU has this implementation's instructions.
    unsafe fn conv(r: Refs, patch: &[&[f32]], c0: usize, o: &mut [f32]);
    /// [`Blocks::conv`] for two pixels (`patch` into `o`, `next` into `o2`), each summed in
    /// the same order as alone, so an implementation may interleave them to hide latency.
    ///
    /// # Safety
    /// The CPU has this implementation's instructions.
    unsafe fn conv2(
        r: Refs,
        patch: &[&[f32]],
        next: &[&[f32]],
        c0: usize,
        o: &mut [f32],
        o2: &mut [f32],
    ) {
        // SAFETY: the caller's contract is `conv`'s.
        unsafe {
            Self::conv(r, patch, c0, o);
            Self::conv(r, next, c0, o2);
        }
    }
    /// Depthwise, channels `c0..c0 + B`: `o = quantise(clip2(bias + Σ_t tap_t · w_t))`, each
    /// tap a pixel's `c` values.
    ///
    /// # Safety
    /// The CPU has this implementation's instructions.
    unsafe fn dw(r: Refs, taps: &[&[f32]], c0: usize, o: &mut [u8]);
    /// A whole convolution row into `dst` (`cols · c` floats, NHWC), each value summed in the
    /// order [`Blocks::conv`] sums it (`super::stem_pixels::conv_row_pixels` runs
    /// [`Blocks::conv2`] pixel by pixel, for kernels without a row version).
    ///
    /// # Safety
    /// The CPU has this implementation's instructions.
    unsafe fn conv_row(r: Refs, row: ConvRow, dst: &mut [f32]);
    /// A whole depthwise row into `out` (`cols · c` bytes, NHWC), each value summed in the
    /// order [`Blocks::dw`] sums it (`super::stem_pixels::dw_row_pixels` runs [`Blocks::dw`]
    /// pixel by pixel).
    ///
    /// # Safety
    /// The CPU has this implementation's instructions.
    unsafe fn dw_row(r: Refs, row: DwRow, out: &mut [u8]);
}
