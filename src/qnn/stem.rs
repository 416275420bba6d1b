//! The float stem of a quantised MobileNet, computed directly: 3×3/2 convolution + ReLU6 +
//! first depthwise 3×3 + ReLU6 + `QuantizeLinear` to `u8` NHWC, in one pass.
//!
//! Quantising these two layers costs most of the network's fidelity (models/README.md), so the
//! shipped models keep them in float, in front of the first `QuantizeLinear`. tract ran them
//! through im2col and its generic matrix product, then a transpose-and-quantise: about half of
//! the int8 path's time on x86 for 4 % of the multiply-adds. Here the convolution's output rows
//! are produced into a ring of `kh` rows (NHWC, channels contiguous), the depthwise layer reads
//! them as soon as it can, and its output is quantised straight into the int8 section's NHWC
//! layout: nothing larger than a few rows is ever written. Inner loops run over channels so the
//! compiler vectorises them; with fused multiply-adds where the CPU has them (x86-64 AVX2+FMA,
//! every aarch64 CPU).
//!
//! Float arithmetic in another order than tract's or onnxruntime's: results agree to float
//! rounding, not bit for bit (the int8 section after it is exact; docs/model.md, "The int8 path").
//!
//! Must not: pick a kernel by itself.

use std::ops::Range;

use super::arith::QParams;
use super::cpu::Kernel;
use super::layer::{Blocks, ConvRow, DwRow, Refs};
use super::stem_pixels::{MAX_TAPS, conv_one, conv_row_pixels, dw_one, dw_row_pixels};

/// A 2-D float convolution's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Strides (rows, columns).
    pub stride: (usize, usize),
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
}

impl ConvGeom {
    /// Output size for an `h × w` input, `None` when the kernel does not fit.
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let ph = h + self.pads[0] + self.pads[2];
        let pw = w + self.pads[1] + self.pads[3];
        if ph < self.kernel.0 || pw < self.kernel.1 || self.stride.0 == 0 || self.stride.1 == 0 {
            return None;
        }
        Some((
            (ph - self.kernel.0) / self.stride.0 + 1,
            (pw - self.kernel.1) / self.stride.1 + 1,
        ))
    }

    fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }
}

/// What the stem is made of, as the ONNX graph gives it.
#[derive(Debug, Clone, Copy)]
pub struct StemParams<'a> {
    /// Input channels (3).
    pub cin: usize,
    /// Channels of both layers' outputs (32).
    pub c: usize,
    /// First convolution.
    pub conv: ConvGeom,
    /// Its weights `[c][cin][kh][kw]`.
    pub conv_w: &'a [f32],
    /// Its bias.
    pub conv_b: &'a [f32],
    /// The clip after it (min, max).
    pub clip1: (f32, f32),
    /// The depthwise convolution (one filter per channel).
    pub dw: ConvGeom,
    /// Its weights `[c][1][kh][kw]`.
    pub dw_w: &'a [f32],
    /// Its bias.
    pub dw_b: &'a [f32],
    /// The clip after it.
    pub clip2: (f32, f32),
    /// The quantisation of the result.
    pub q: QParams,
}

/// The stem with its weights laid out for the direct loops.
#[derive(Debug, Clone)]
pub struct Stem {
    cin: usize,
    c: usize,
    conv: ConvGeom,
    /// `[kh][kw][cin][c]`.
    conv_w: Vec<f32>,
    conv_b: Vec<f32>,
    clip1: (f32, f32),
    dw: ConvGeom,
    /// `[kh·kw][c]`.
    dw_w: Vec<f32>,
    dw_b: Vec<f32>,
    clip2: (f32, f32),
    q: QParams,
    kernel: Kernel,
}

impl Stem {
    /// Lay out `p` for `kernel` (portable, or the FMA versions: `avx2` on x86-64, `neon` on
    /// aarch64).
    pub fn new(p: &StemParams, kernel: Kernel) -> Result<Self, String> {
        let (cin, c) = (p.cin, p.c);
        let (t1, t2) = (p.conv.taps(), p.dw.taps());
        if cin == 0 || c == 0 || t1 == 0 || t2 == 0 {
            return Err("stem with an empty shape".into());
        }
        if p.conv_w.len() != c * cin * t1
            || p.conv_b.len() != c
            || p.dw_w.len() != c * t2
            || p.dw_b.len() != c
        {
            return Err(format!(
                "stem of {cin}->{c} channels: {} + {} conv values, {} + {} depthwise values",
                p.conv_w.len(),
                p.conv_b.len(),
                p.dw_w.len(),
                p.dw_b.len()
            ));
        }
        if p.dw.pads[0] >= p.dw.kernel.0 || p.dw.pads[2] >= p.dw.kernel.0 {
            return Err("stem depthwise padding as large as its kernel".into());
        }
        if p.conv.kernel.0 > MAX_TAPS || t2 > MAX_TAPS {
            return Err(format!(
                "stem kernels of {} rows and {t2} depthwise taps (at most {MAX_TAPS} each)",
                p.conv.kernel.0
            ));
        }
        if !(p.q.scale.is_finite() && p.q.scale > 0.0 && (0..=255).contains(&p.q.zero)) {
            return Err("stem quantisation: scale must be positive, zero point u8".into());
        }
        let ok = match kernel {
            Kernel::Portable => true,
            Kernel::Avx2 => cfg!(target_arch = "x86_64") && fma_available(),
            Kernel::Neon => cfg!(target_arch = "aarch64"),
            _ => false,
        };
        if !ok {
            return Err(format!("kernel {} cannot run the stem here", kernel.name()));
        }
        // [ky][kx][ci][c], the order of a patch taken from the NHWC input row by row.
        let (kh, kw) = p.conv.kernel;
        let mut conv_w = vec![0f32; cin * t1 * c];
        for o in 0..c {
            for ci in 0..cin {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let t = (ky * kw + kx) * cin + ci;
                        conv_w[t * c + o] = p.conv_w[((o * cin + ci) * kh + ky) * kw + kx];
                    }
                }
            }
        }
        let mut dw_w = vec![0f32; t2 * c];
        for o in 0..c {
            for t in 0..t2 {
                dw_w[t * c + o] = p.dw_w[o * t2 + t];
            }
        }
        Ok(Stem {
            cin,
            c,
            conv: p.conv,
            conv_w,
            conv_b: p.conv_b.to_vec(),
            clip1: p.clip1,
            dw: p.dw,
            dw_w,
            dw_b: p.dw_b.to_vec(),
            clip2: p.clip2,
            q: p.q,
            kernel,
        })
    }

    /// The kernel this stem runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Output channels.
    pub fn channels(&self) -> usize {
        self.c
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.cin
    }

    /// Output height and width for an `h × w` input.
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (h1, w1) = self.conv.out_size(h, w)?;
        self.dw.out_size(h1, w1)
    }

    /// Multiply-adds for an `h × w` input.
    pub fn macs(&self, h: usize, w: usize) -> usize {
        let Some((h1, w1)) = self.conv.out_size(h, w) else {
            return 0;
        };
        let (h2, w2) = self.dw.out_size(h1, w1).unwrap_or((0, 0));
        h1 * w1 * self.c * self.cin * self.conv.taps() + h2 * w2 * self.c * self.dw.taps()
    }

    /// `x`: NCHW `[cin][h][w]` (batch 1); `out`: NHWC `[oh][ow][c]` `u8`. Inside a pool
    /// the output rows are split over its threads ([`super::par`]); each part makes the
    /// convolution rows it reads (a boundary's one or two rows are made by both parts).
    pub fn run(&self, x: &[f32], h: usize, w: usize, out: &mut [u8]) {
        let (oh, ow) = self
            .out_size(h, w)
            .expect("stem input smaller than its kernels");
        assert_eq!(x.len(), self.cin * h * w, "stem input length");
        assert_eq!(out.len(), oh * ow * self.c, "stem output length");
        // At least 4 output rows a part; each part pads the input rows it reads.
        let parts = super::par::ranges(oh, super::par::threads(), 1, 4);
        super::par::for_rows(out, ow * self.c, &parts, |rows, o| {
            let held = self.input_rows((h, w), rows.clone());
            INPUT.with(|input| {
                let input = &mut *input.borrow_mut();
                self.pad_input(x, (h, w), held.clone(), input);
                RING.with(|ring| {
                    let ring = &mut ring.borrow_mut();
                    self.rows((input, held.start), (h, w), rows, o, ring)
                })
            })
        });
    }

    /// The padded input rows (row 0 is the top padding) that output rows `rows` read.
    fn input_rows(&self, (h, w): (usize, usize), rows: Range<usize>) -> Range<usize> {
        let (h1, _) = self.conv.out_size(h, w).unwrap_or((0, 0));
        if rows.is_empty() || h1 == 0 {
            return 0..0;
        }
        let dt = self.dw.pads[0];
        // Convolution rows the depthwise rows read (clipped to the map; the rest is padding).
        let first = (rows.start * self.dw.stride.0)
            .saturating_sub(dt)
            .min(h1 - 1);
        let last = ((rows.end - 1) * self.dw.stride.0 + self.dw.kernel.0)
            .saturating_sub(dt + 1)
            .min(h1 - 1);
        let first = first.min(last);
        first * self.conv.stride.0..last * self.conv.stride.0 + self.conv.kernel.0
    }

    /// Step 1 of [`run_with`]: rows `held` of the input padded for the convolution (zeros in
    /// the padding), copied from NCHW `x` into `input` in NHWC order.
    fn pad_input(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        held: Range<usize>,
        input: &mut Vec<f32>,
    ) {
        let cin = self.cin;
        let [pt, pl, _, pr] = self.conv.pads;
        let wp = w + pl + pr;
        input.clear();
        input.resize(held.len() * wp * cin, 0.0);
        for ci in 0..cin {
            for (i, py) in held.clone().enumerate() {
                let Some(y) = py.checked_sub(pt).filter(|&y| y < h) else {
                    continue;
                };
                let src = &x[(ci * h + y) * w..(ci * h + y + 1) * w];
                let dst = &mut input[(i * wp + pl) * cin..(i * wp + pl + w) * cin];
                for (d, &v) in dst.chunks_exact_mut(cin).zip(src) {
                    d[ci] = v;
                }
            }
        }
    }

    /// The output rows `rows` from the padded input, on this CPU's kernel.
    fn rows(
        &self,
        input: (&[f32], usize),
        hw: (usize, usize),
        rows: Range<usize>,
        out: &mut [u8],
        ring: &mut Vec<f32>,
    ) {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Stem::new` accepted this kernel only where AVX2 and FMA were detected.
            Kernel::Avx2 => unsafe { run_avx2_fma(self, input, hw, rows, out, ring) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of every aarch64 CPU.
            Kernel::Neon => unsafe {
                run_with::<super::neon::StemNeon>(self, input, hw, rows, out, ring)
            },
            // SAFETY: the portable blocks need no instruction-set extension.
            _ => unsafe { run_with::<PortableBlocks>(self, input, hw, rows, out, ring) },
        }
    }
}

fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2_fma(
    s: &Stem,
    input: (&[f32], usize),
    hw: (usize, usize),
    rows: Range<usize>,
    out: &mut [u8],
    ring: &mut Vec<f32>,
) {
    // No closure between here and the loops: a closure would not inherit this function's
    // target features, and the blocks' intrinsics would not be inlined.
    // SAFETY: the caller checked AVX2 and FMA, which `StemAvx2` needs.
    unsafe { run_with::<super::x86::StemAvx2>(s, input, hw, rows, out, ring) }
}

thread_local! {
    /// The padded NHWC input rows one part reads, made by the thread that runs that part.
    static INPUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The ring of convolution rows, one per thread that computes a part.
    static RING: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The stem's output rows `out_rows` (see [`Stem`]'s module doc for the order of work).
///
/// 1. ([`Stem::pad_input`], before:) the NCHW input rows these output rows read, copied into
///    an NHWC buffer with the convolution's padding as zeros (`input`, whose first row is
///    padded row `base`), so each tap row of a 3×3 patch is `kw·cin` contiguous floats and no
///    loop below needs a bounds test.
/// 2. Convolution rows are produced on demand into a ring of `kh2` rows, each with the
///    depthwise layer's left and right padding as zero columns ([`Blocks::conv_row`]).
/// 3. Each depthwise output row sums its taps over blocks of channels held in registers,
///    then clips and quantises ([`Blocks::dw_row`]).
///
/// # Safety
/// The CPU has the instructions `K` uses.
#[inline(always)]
unsafe fn run_with<K: Blocks>(
    s: &Stem,
    (input, base): (&[f32], usize),
    (h, w): (usize, usize),
    out_rows: Range<usize>,
    out: &mut [u8],
    ring: &mut Vec<f32>,
) {
    let (c, cin) = (s.c, s.cin);
    let (h1, w1) = s.conv.out_size(h, w).unwrap_or((0, 0));
    let (h2, w2) = s.dw.out_size(h1, w1).unwrap_or((0, 0));
    let (kh1, kw1) = s.conv.kernel;
    let (kh2, kw2) = s.dw.kernel;
    let [pt, pl, pb, pr] = s.conv.pads;
    let (hp, wp) = (h + pt + pb, w + pl + pr);
    assert!(
        input.len().is_multiple_of(wp * cin) && base + input.len() / (wp * cin) <= hp,
        "stem: padded input rows"
    );
    assert!(
        out_rows.end <= h2 && out.len() == out_rows.len() * w2 * c,
        "stem: output rows"
    );
    let r0 = out_rows.start;
    // 2. Ring rows: [w1 + dl + dr][c], zero in the padding columns.
    let [dt, dl, _, dr] = s.dw.pads;
    let rw = w1 + dl + dr;
    ring.clear();
    ring.resize(kh2 * rw * c, 0.0);
    let mut ready: [Option<usize>; MAX_TAPS] = [None; MAX_TAPS];
    let zero_row = vec![0f32; rw * c];
    for oy in out_rows {
        // The convolution rows this output row reads (y in 0..h1), made if not in the ring.
        let mut rows: [Option<usize>; MAX_TAPS] = [None; MAX_TAPS];
        for (ky, row) in rows.iter_mut().enumerate().take(kh2) {
            let y = (oy * s.dw.stride.0 + ky) as isize - dt as isize;
            if y < 0 || y >= h1 as isize {
                continue;
            }
            let y = y as usize;
            let slot = y % kh2;
            if ready[slot] != Some(y) {
                let dst = &mut ring[slot * rw * c..(slot + 1) * rw * c];
                let y0 = y * s.conv.stride.0;
                let mut inrows: [&[f32]; MAX_TAPS] = [&[]; MAX_TAPS];
                for (ky, r) in inrows.iter_mut().enumerate().take(kh1) {
                    let at = (y0 + ky)
                        .checked_sub(base)
                        .expect("stem: an input row not held");
                    *r = &input[at * wp * cin..(at + 1) * wp * cin];
                }
                let conv_row = ConvRow {
                    rows: &inrows[..kh1],
                    cin,
                    kw: kw1,
                    sx: s.conv.stride.1,
                    cols: w1,
                };
                let dst = &mut dst[dl * c..(dl + w1) * c];
                // SAFETY: the caller checked K's instruction set.
                unsafe { K::conv_row(s.refs(), conv_row, dst) };
                ready[slot] = Some(y);
            }
            *row = Some(slot);
        }
        // 3. Depthwise over the ring.
        let mut dwrows: [&[f32]; MAX_TAPS] = [&[]; MAX_TAPS];
        for (ky, r) in dwrows.iter_mut().enumerate().take(kh2) {
            *r = match rows[ky] {
                Some(slot) => &ring[slot * rw * c..(slot + 1) * rw * c],
                None => &zero_row[..],
            };
        }
        let dw_row = DwRow {
            rows: &dwrows[..kh2],
            kw: kw2,
            sx: s.dw.stride.1,
            cols: w2,
        };
        let o = &mut out[(oy - r0) * w2 * c..(oy - r0 + 1) * w2 * c];
        // SAFETY: the caller checked K's instruction set.
        unsafe { K::dw_row(s.refs(), dw_row, o) };
    }
}

impl Stem {
    fn refs(&self) -> Refs<'_> {
        Refs {
            c: self.c,
            conv_w: &self.conv_w,
            conv_b: &self.conv_b,
            clip1: self.clip1,
            dw_w: &self.dw_w,
            dw_b: &self.dw_b,
            clip2: self.clip2,
            q: self.q,
        }
    }
}

/// Plain Rust, one channel at a time (also the tail of the SIMD versions).
struct PortableBlocks;

impl Blocks for PortableBlocks {
    const B: usize = 1;
    unsafe fn conv(r: Refs, patch: &[&[f32]], c0: usize, o: &mut [f32]) {
        conv_one(r, patch, c0, o)
    }
    unsafe fn dw(r: Refs, taps: &[&[f32]], c0: usize, o: &mut [u8]) {
        dw_one(r, taps, c0, o)
    }
    unsafe fn conv_row(r: Refs, row: ConvRow, dst: &mut [f32]) {
        // SAFETY: the caller's contract is this function's.
        unsafe { conv_row_pixels::<Self>(r, row, dst) }
    }
    unsafe fn dw_row(r: Refs, row: DwRow, out: &mut [u8]) {
        // SAFETY: the caller's contract is this function's.
        unsafe { dw_row_pixels::<Self>(r, row, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qnn::cpu::{Cpu, Layer, runnable_kernels};

    /// The two convolutions in the most literal form (NCHW, f64), then the same quantisation.
    fn reference(p: &StemParams, x: &[f32], h: usize, w: usize) -> (Vec<f64>, (usize, usize)) {
        let (h1, w1) = p.conv.out_size(h, w).unwrap();
        let (kh, kw) = p.conv.kernel;
        let mut y1 = vec![0f64; p.c * h1 * w1];
        for o in 0..p.c {
            for oy in 0..h1 {
                for ox in 0..w1 {
                    let mut a = p.conv_b[o] as f64;
                    for ci in 0..p.cin {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy =
                                    (oy * p.conv.stride.0 + ky) as isize - p.conv.pads[0] as isize;
                                let ix =
                                    (ox * p.conv.stride.1 + kx) as isize - p.conv.pads[1] as isize;
                                if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                                    a += x[(ci * h + iy as usize) * w + ix as usize] as f64
                                        * p.conv_w[((o * p.cin + ci) * kh + ky) * kw + kx] as f64;
                                }
                            }
                        }
                    }
                    y1[(o * h1 + oy) * w1 + ox] = a.clamp(p.clip1.0 as f64, p.clip1.1 as f64);
                }
            }
        }
        let (h2, w2) = p.dw.out_size(h1, w1).unwrap();
        let (kh, kw) = p.dw.kernel;
        let mut y2 = vec![0f64; h2 * w2 * p.c];
        for o in 0..p.c {
            for oy in 0..h2 {
                for ox in 0..w2 {
                    let mut a = p.dw_b[o] as f64;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * p.dw.stride.0 + ky) as isize - p.dw.pads[0] as isize;
                            let ix = (ox * p.dw.stride.1 + kx) as isize - p.dw.pads[1] as isize;
                            if iy >= 0 && iy < h1 as isize && ix >= 0 && ix < w1 as isize {
                                a += y1[(o * h1 + iy as usize) * w1 + ix as usize]
                                    * p.dw_w[(o * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                    y2[(oy * w2 + ox) * p.c + o] = a.clamp(p.clip2.0 as f64, p.clip2.1 as f64);
                }
            }
        }
        (y2, (h2, w2))
    }

    /// A 3×3 kernel with the same stride both ways.
    fn k3(stride: usize, pads: [usize; 4]) -> ConvGeom {
        ConvGeom {
            kernel: (3, 3),
            stride: (stride, stride),
            pads,
        }
    }

    /// Random weights and input for a stride-2 3×3 convolution then a 3×3 depthwise, both
    /// clipped to 0..6 and quantised with scale 0.02.
    struct RandomStem {
        cin: usize,
        c: usize,
        conv_w: Vec<f32>,
        conv_b: Vec<f32>,
        dw_w: Vec<f32>,
        dw_b: Vec<f32>,
        x: Vec<f32>,
    }

    impl RandomStem {
        fn new(seed: u64, cin: usize, c: usize, pixels: usize) -> Self {
            let mut r = crate::rng::Rng::new(seed);
            let mut draw =
                |n: usize, sd: f32| -> Vec<f32> { (0..n).map(|_| r.normal() * sd).collect() };
            RandomStem {
                cin,
                c,
                conv_w: draw(c * cin * 9, 0.3),
                conv_b: draw(c, 0.1),
                dw_w: draw(c * 9, 0.4),
                dw_b: draw(c, 0.1),
                x: draw(cin * pixels, 1.0),
            }
        }

        fn params(&self) -> StemParams<'_> {
            StemParams {
                cin: self.cin,
                c: self.c,
                conv: k3(2, [0, 0, 1, 1]),
                conv_w: &self.conv_w,
                conv_b: &self.conv_b,
                clip1: (0.0, 6.0),
                dw: k3(1, [1, 1, 1, 1]),
                dw_w: &self.dw_w,
                dw_b: &self.dw_b,
                clip2: (0.0, 6.0),
                q: QParams {
                    scale: 0.02,
                    zero: 0,
                },
            }
        }
    }

    #[test]
    fn every_stem_kernel_computes_the_two_convolutions() {
        // 52 channels: past the last whole block of every kernel (32 a pixel step, 16 a
        // convolution row step, 8 a depthwise row step), so the channel tails run too.
        let (cin, c, h, w) = (3usize, 52usize, 29usize, 10usize);
        let data = RandomStem::new(5, cin, c, h * w);
        let cpu = Cpu::detect();
        let pool = std::sync::Arc::new(crate::qnn::pool::Pool::new(3).unwrap());
        // The models' padding (none at the top and left) on one thread; padding on every
        // side split over three threads, so that parts pad rows at the edges and inside; and
        // a depthwise stride of 2 (not in the models) split too.
        for (pads, dw_stride, pooled) in [
            ([0, 0, 1, 1], 1, false),
            ([1, 1, 1, 1], 1, true),
            ([1, 1, 1, 1], 2, true),
        ] {
            let mut p = data.params();
            p.conv = k3(2, pads);
            p.dw = k3(dw_stride, [1, 1, 1, 1]);
            let x = &data.x;
            let (want, (h2, w2)) = reference(&p, x, h, w);
            for kernel in runnable_kernels(Layer::Stem, &cpu) {
                if kernel == Kernel::TractOps {
                    // Not a kernel of this op: the stem is then left unfused to tract.
                    assert!(Stem::new(&p, kernel).is_err());
                    continue;
                }
                let s = Stem::new(&p, kernel).unwrap();
                assert_eq!(s.out_size(h, w), Some((h2, w2)));
                let mut got = vec![0u8; h2 * w2 * c];
                if pooled {
                    crate::qnn::par::with_pool(&pool, || s.run(x, h, w, &mut got));
                } else {
                    s.run(x, h, w, &mut got);
                }
                // Quantised from the exact values: equal, except where float rounding of a
                // sum lands on the other side of a rounding boundary (at most one step).
                let mut off = 0;
                for (i, (&g, &v)) in got.iter().zip(&want).enumerate() {
                    let exact = (v / 0.02).round_ties_even().clamp(0.0, 255.0);
                    let d = (g as f64 - exact).abs();
                    assert!(
                        d <= 1.0,
                        "{} {pads:?} /{dw_stride} at {i}: {g} vs {exact}",
                        kernel.name()
                    );
                    off += (d > 0.0) as usize;
                }
                assert!(
                    off * 100 <= got.len(),
                    "{} {pads:?} /{dw_stride}: {off} values off by one",
                    kernel.name()
                );
                assert!(got.iter().any(|&v| v > 10), "degenerate data");
            }
        }
    }

    /// `K`'s pixel kernels, rows pixel by pixel: the stem as it ran before the row kernels.
    #[cfg(target_arch = "x86_64")]
    struct PerPixel<K>(std::marker::PhantomData<K>);

    #[cfg(target_arch = "x86_64")]
    impl<K: Blocks> Blocks for PerPixel<K> {
        const B: usize = K::B;
        unsafe fn conv(r: Refs, patch: &[&[f32]], c0: usize, o: &mut [f32]) {
            // SAFETY: the caller's contract is K's.
            unsafe { K::conv(r, patch, c0, o) }
        }
        unsafe fn conv2(
            r: Refs,
            patch: &[&[f32]],
            next: &[&[f32]],
            c0: usize,
            o: &mut [f32],
            o2: &mut [f32],
        ) {
            // SAFETY: the caller's contract is K's.
            unsafe { K::conv2(r, patch, next, c0, o, o2) }
        }
        unsafe fn dw(r: Refs, taps: &[&[f32]], c0: usize, o: &mut [u8]) {
            // SAFETY: the caller's contract is K's.
            unsafe { K::dw(r, taps, c0, o) }
        }
        unsafe fn conv_row(r: Refs, row: ConvRow, dst: &mut [f32]) {
            // SAFETY: the caller's contract is this function's.
            unsafe { conv_row_pixels::<Self>(r, row, dst) }
        }
        unsafe fn dw_row(r: Refs, row: DwRow, out: &mut [u8]) {
            // SAFETY: the caller's contract is this function's.
            unsafe { dw_row_pixels::<Self>(r, row, out) }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_row_kernels_give_the_bytes_of_its_pixel_kernels() {
        let s_of = |p: &StemParams| Stem::new(p, Kernel::Avx2);
        // Widths whose convolution rows end on every column tail (6-column steps) and whose
        // depthwise rows end on every tail of 4; channels in whole blocks of 32 (the pixel
        // kernels' step), so both paths use the same instructions for every value.
        let mut tested = 0;
        for (c, w) in [
            (32usize, 12usize),
            (32, 14),
            (64, 16),
            (32, 18),
            (32, 20),
            (64, 22),
        ] {
            let h = 9;
            let data = RandomStem::new(w as u64, 3, c, h * w);
            let p = data.params();
            let Ok(s) = s_of(&p) else {
                return; // no AVX2 and FMA here
            };
            let (h2, w2) = s.out_size(h, w).unwrap();
            let mut input = Vec::new();
            let held = s.input_rows((h, w), 0..h2);
            s.pad_input(&data.x, (h, w), held.clone(), &mut input);
            let (mut rows, mut pixels) = (vec![0u8; h2 * w2 * c], vec![0u8; h2 * w2 * c]);
            let mut ring = Vec::new();
            // SAFETY: `Stem::new` accepted the AVX2 kernel, so AVX2 and FMA are here.
            unsafe {
                run_with::<crate::qnn::x86::StemAvx2>(
                    &s,
                    (&input, held.start),
                    (h, w),
                    0..h2,
                    &mut rows,
                    &mut ring,
                );
                run_with::<PerPixel<crate::qnn::x86::StemAvx2>>(
                    &s,
                    (&input, held.start),
                    (h, w),
                    0..h2,
                    &mut pixels,
                    &mut ring,
                );
            }
            assert!(rows.iter().any(|&v| v > 10), "degenerate data");
            assert!(rows == pixels, "c {c}, w {w}: the row kernels differ");
            tested += 1;
        }
        assert_eq!(tested, 6);
    }

    #[test]
    fn every_stem_kernel_gives_the_same_bytes_on_any_thread_count() {
        // 37 output rows: parts of several rows each and a ragged last one.
        let (cin, c, h, w) = (3usize, 32usize, 74usize, 30usize);
        let data = RandomStem::new(6, cin, c, h * w);
        let (p, x) = (data.params(), &data.x);
        for kernel in runnable_kernels(Layer::Stem, &Cpu::detect()) {
            let Ok(s) = Stem::new(&p, kernel) else {
                continue;
            };
            let (h2, w2) = s.out_size(h, w).unwrap();
            let run = || {
                let mut out = vec![0u8; h2 * w2 * c];
                s.run(x, h, w, &mut out);
                out
            };
            let one = run();
            assert!(one.iter().any(|&v| v > 10), "degenerate data");
            for t in [2, 3] {
                let pool = std::sync::Arc::new(crate::qnn::pool::Pool::new(t).unwrap());
                let got = crate::qnn::par::with_pool(&pool, run);
                assert!(got == one, "{} on {t} threads differs", kernel.name());
            }
        }
    }
}
