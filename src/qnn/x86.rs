//! x86-64 kernels: the 1×1 convolution on VNNI (`vpdpbusd`) or on plain AVX2 (`vpmaddwd`),
//! and the depthwise convolution on AVX2.
//!
//! Every type here checks at construction that the CPU has its instructions (`None`
//! otherwise) and keeps every size its `unsafe` inner loops rely on private, checked against
//! the slices it is given on each call. Which kernel a layer gets is [`super::cpu`]'s choice.
//!
//! - **VNNI 1×1**: `vpdpbusd` multiplies four `u8` activations by four `i8` weights and adds
//!   them to an `i32` lane without saturation. Weights are packed once into panels of 16
//!   output channels × 4 input channels; each activation quadruple is broadcast. Tile: 6
//!   pixels × 16 channels (12 accumulators), which fits the 16 vector registers of AVX2-class
//!   cores.
//! - **AVX2 1×1** (no VNNI): `vpmaddubsw` would saturate (255·127·2 > 2^15), so activations
//!   are widened to `i16` once per block of 6 pixels, weights are stored as `i16` pairs, and
//!   `vpmaddwd` adds two exact products per `i32` lane. Same 6×16 tile.
//! - **AVX2 depthwise**: 16 channels per step, taps taken in pairs so that `vpmaddwd` adds two
//!   taps' products per lane; the activation zero point is folded into the bias and padding
//!   reads a row of `x_zero` bytes.
//!
//! All epilogues: bias, `f32` scale, clamp, round half to even (the MXCSR default mode of
//! `vcvtps2dq`), zero point, narrow with unsigned saturation: [`super::arith::requant`].

use std::arch::x86_64::*;

use std::ops::Range;

use super::layer::DwCommon;
use super::layer::{PointwiseParams, PwCommon};

const MR: usize = 6;
const NR: usize = 16;

/// Which encoding of `vpdpbusd` the CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    AvxVnni,
    Avx512Vnni,
}

fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The VNNI 1×1 kernel: weights `[panel][k/4][16][4]`.
#[derive(Debug, Clone)]
pub struct VnniPointwise {
    isa: Isa,
    w: Vec<i8>,
    /// Bias and scales padded to whole panels.
    com: PwCommon,
}

impl VnniPointwise {
    /// Pack the layer `l` (its bias folded for raw `u8` activations). `None` when the CPU has
    /// no VNNI, or `k` is not a multiple of 4.
    pub fn new(l: &PointwiseParams) -> Option<Self> {
        let isa = if std::is_x86_feature_detected!("avxvnni") && has_avx2() {
            Isa::AvxVnni
        } else if std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512vl")
            && has_avx2()
        {
            Isa::Avx512Vnni
        } else {
            return None;
        };
        let (n, k, w) = (l.n, l.k, l.w);
        if k == 0 || !k.is_multiple_of(4) || n == 0 {
            return None;
        }
        let panels = n.div_ceil(NR);
        let com = PwCommon::new(l, panels * NR, 0);
        let k4 = k / 4;
        let mut packed = vec![0i8; panels * k4 * NR * 4];
        for p in 0..panels {
            for kk in 0..k4 {
                for j in 0..NR {
                    let col = p * NR + j;
                    if col < n {
                        for r in 0..4 {
                            packed[((p * k4 + kk) * NR + j) * 4 + r] = w[col * k + kk * 4 + r];
                        }
                    }
                }
            }
        }
        Some(VnniPointwise {
            isa,
            w: packed,
            com,
        })
    }

    /// `x`: `[pixels][k]`, `out`: `[pixels][n]`.
    pub fn run(&self, x: &[u8], out: &mut [u8]) {
        let (pixels, panels) = self.com.checked_tiles(x, out, NR);
        assert!(self.w.len() == panels * (self.com.k / 4) * NR * 4);
        // SAFETY: the ISA was detected at construction; the lengths the kernel relies on are
        // asserted by `checked_tiles` (x, out, bias, scale) and just above (w), and the kernel
        // indexes only within them (see `vnni_kernel`).
        unsafe {
            match self.isa {
                Isa::AvxVnni => vnni_avx(self, x, pixels, out),
                Isa::Avx512Vnni => vnni_avx512(self, x, pixels, out),
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn vnni_avx(p: &VnniPointwise, x: &[u8], pixels: usize, out: &mut [u8]) {
    // SAFETY: forwarded from `VnniPointwise::run`.
    unsafe {
        vnni_kernel(p, x, pixels, out, |a, b, c| {
            _mm256_dpbusd_avx_epi32(a, b, c)
        })
    }
}

#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn vnni_avx512(p: &VnniPointwise, x: &[u8], pixels: usize, out: &mut [u8]) {
    // SAFETY: forwarded from `VnniPointwise::run`.
    unsafe { vnni_kernel(p, x, pixels, out, |a, b, c| _mm256_dpbusd_epi32(a, b, c)) }
}

/// # Safety
/// The CPU has AVX2 (and the instructions `dot` uses); `x.len() == pixels * p.com.k`,
/// `out.len() == pixels * p.com.n`, and `p`'s packed arrays have the lengths `VnniPointwise::run`
/// asserts.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn vnni_kernel<F>(p: &VnniPointwise, x: &[u8], pixels: usize, out: &mut [u8], dot: F)
where
    F: Fn(__m256i, __m256i, __m256i) -> __m256i + Copy,
{
    let (k, n) = (p.com.k, p.com.n);
    let k4 = k / 4;
    let panels = n.div_ceil(NR);
    let xp = x.as_ptr();
    let op = out.as_mut_ptr();
    for panel in 0..panels {
        // SAFETY (whole block): weight reads stay below (panel + 1) * k4 * 64 <= w.len();
        // bias/scale reads below (panel + 1) * 16; activation reads below pixels * k (rows are
        // clamped to the last pixel); output writes below pixels * n (`cols` limits the last
        // panel).
        unsafe {
            let wp = p.w.as_ptr().add(panel * k4 * NR * 4);
            let epilogue = PanelEpilogue::new(&p.com, panel);
            let mut row0 = 0;
            while row0 < pixels {
                let rows = (pixels - row0).min(MR);
                let mut rp = [xp; MR];
                for (r, ptr) in rp.iter_mut().enumerate() {
                    *ptr = xp.add((row0 + r.min(rows - 1)) * k);
                }
                let mut acc = [[_mm256_setzero_si256(); 2]; MR];
                for kk in 0..k4 {
                    let w0 = _mm256_loadu_si256(wp.add(kk * 64) as *const __m256i);
                    let w1 = _mm256_loadu_si256(wp.add(kk * 64 + 32) as *const __m256i);
                    for r in 0..MR {
                        let a =
                            _mm256_set1_epi32((rp[r].add(kk * 4) as *const i32).read_unaligned());
                        acc[r][0] = dot(acc[r][0], a, w0);
                        acc[r][1] = dot(acc[r][1], a, w1);
                    }
                }
                epilogue.store(&acc[..rows], op.add(row0 * n), n);
                row0 += MR;
            }
        }
    }
}

/// The epilogue of one panel of 16 output channels of a 1×1 kernel, in registers: its bias and
/// scales, the layer's clamp bounds and zero point.
#[derive(Clone, Copy)]
struct PanelEpilogue {
    /// First channel and channels of the panel (16 but in the last).
    col0: usize,
    cols: usize,
    bias: [__m256i; 2],
    scale: [__m256; 2],
    lo: __m256,
    hi: __m256,
    zero: __m256i,
}

impl PanelEpilogue {
    /// # Safety
    /// The CPU has AVX2; `com`'s bias and scales cover whole panels (as
    /// [`PwCommon::checked_tiles`] checks) and `panel < com.n.div_ceil(16)`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn new(com: &PwCommon, panel: usize) -> Self {
        let col0 = panel * NR;
        // SAFETY: reads 16 values from col0 of the bias and the scales (caller).
        unsafe {
            let (b, s) = (com.bias.as_ptr().add(col0), com.scale.as_ptr().add(col0));
            PanelEpilogue {
                col0,
                cols: (com.n - col0).min(NR),
                bias: [
                    _mm256_loadu_si256(b as *const __m256i),
                    _mm256_loadu_si256(b.add(8) as *const __m256i),
                ],
                scale: [_mm256_loadu_ps(s), _mm256_loadu_ps(s.add(8))],
                lo: _mm256_set1_ps(-com.y_zero as f32),
                hi: _mm256_set1_ps((255 - com.y_zero) as f32),
                zero: _mm256_set1_epi32(com.y_zero),
            }
        }
    }

    /// Requantise the tile rows `acc` (16 channels each) and store them: row `r` at
    /// `rows_out + r·n + col0`, `cols` bytes.
    ///
    /// # Safety
    /// The CPU has AVX2; `rows_out` starts an output row of `n` bytes followed by at least
    /// `acc.len() - 1` more.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store(&self, acc: &[[__m256i; 2]], rows_out: *mut u8, n: usize) {
        let e = self;
        for (r, acc_r) in acc.iter().enumerate() {
            // SAFETY: row r of the output (caller), `cols` bytes from col0 within it.
            unsafe {
                store16(
                    rows_out.add(r * n + e.col0),
                    e.cols,
                    requant8(acc_r[0], e.bias[0], e.scale[0], e.lo, e.hi, e.zero),
                    requant8(acc_r[1], e.bias[1], e.scale[1], e.lo, e.hi, e.zero),
                );
            }
        }
    }
}

/// Store the low 8 bytes of `q0` then of `q1` (16 channels), or only the first `cols`.
///
/// # Safety
/// `dst` is valid for `cols` (≤ 16) byte writes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store16(dst: *mut u8, cols: usize, q0: __m128i, q1: __m128i) {
    // SAFETY: `dst` has room for `cols` bytes; the full stores happen only when cols == 16.
    unsafe {
        if cols == NR {
            _mm_storel_epi64(dst as *mut __m128i, q0);
            _mm_storel_epi64(dst.add(8) as *mut __m128i, q1);
        } else {
            let mut tmp = [0u8; 16];
            _mm_storel_epi64(tmp.as_mut_ptr() as *mut __m128i, q0);
            _mm_storel_epi64(tmp.as_mut_ptr().add(8) as *mut __m128i, q1);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
        }
    }
}

/// Bias, scale, clamp, round half to even, add the zero point, narrow to 8 bytes (low half).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn requant8(
    acc: __m256i,
    bias: __m256i,
    scale: __m256,
    lo: __m256,
    hi: __m256,
    zero: __m256i,
) -> __m128i {
    let f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, bias)), scale);
    let f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
    let i = _mm256_add_epi32(_mm256_cvtps_epi32(f), zero);
    let w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    _mm_packus_epi16(w, w)
}

/// The AVX2 1×1 kernel: weights as `i16` pairs, `[panel][ceil(k/2)][16][2]`.
#[derive(Debug, Clone)]
pub struct Avx2Pointwise {
    w: Vec<i16>,
    /// Bias and scales padded to whole panels.
    com: PwCommon,
}

impl Avx2Pointwise {
    /// Pack the layer `l` (its bias folded for raw `u8` activations). `None` without AVX2.
    pub fn new(l: &PointwiseParams) -> Option<Self> {
        let (n, k, w) = (l.n, l.k, l.w);
        if !has_avx2() || k == 0 || n == 0 {
            return None;
        }
        let panels = n.div_ceil(NR);
        let com = PwCommon::new(l, panels * NR, 0);
        let k2 = k.div_ceil(2);
        let mut packed = vec![0i16; panels * k2 * NR * 2];
        for p in 0..panels {
            for kk in 0..k2 {
                for j in 0..NR {
                    let col = p * NR + j;
                    for r in 0..2 {
                        let kin = kk * 2 + r;
                        if col < n && kin < k {
                            packed[((p * k2 + kk) * NR + j) * 2 + r] = w[col * k + kin] as i16;
                        }
                    }
                }
            }
        }
        Some(Avx2Pointwise { w: packed, com })
    }

    /// `x`: `[pixels][k]`, `out`: `[pixels][n]`.
    pub fn run(&self, x: &[u8], out: &mut [u8]) {
        let (pixels, panels) = self.com.checked_tiles(x, out, NR);
        let k2 = self.com.k.div_ceil(2);
        assert!(self.w.len() == panels * k2 * NR * 2);
        // Activations of one block of MR pixels, widened to i16 pairs (k padded to even).
        let mut wide = vec![0i16; MR * k2 * 2];
        // SAFETY: AVX2 was detected at construction; lengths are asserted above (x, out, bias
        // and scale by `checked_tiles`) and `wide` holds MR rows of 2·k2 values.
        unsafe { avx2_pointwise(self, x, pixels, &mut wide, out) }
    }
}

/// # Safety
/// The CPU has AVX2 and FMA; `x.len() == pixels * p.com.k`, `out.len() == pixels * p.com.n`,
/// `wide.len() == MR * 2 * ceil(k/2)`, and `p`'s arrays have the lengths `run` asserts.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_pointwise(
    p: &Avx2Pointwise,
    x: &[u8],
    pixels: usize,
    wide: &mut [i16],
    out: &mut [u8],
) {
    let (k, n) = (p.com.k, p.com.n);
    let k2 = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    let op = out.as_mut_ptr();
    let mut row0 = 0;
    while row0 < pixels {
        let rows = (pixels - row0).min(MR);
        // Widen the block's rows (the last real row repeats into unused slots).
        for r in 0..MR {
            let src = &x[(row0 + r.min(rows - 1)) * k..][..k];
            let dst = &mut wide[r * k2 * 2..(r + 1) * k2 * 2];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s as i16;
            }
            if k % 2 == 1 {
                dst[k] = 0;
            }
        }
        let wp0 = wide.as_ptr() as *const i32;
        for panel in 0..panels {
            // SAFETY (whole block): weight reads below (panel + 1) * k2 * 32 i16 = w.len()
            // for the last panel; bias/scale below (panel + 1) * 16; `wide` reads below
            // MR * k2 i32 words; output writes below pixels * n (rows ≤ remaining pixels,
            // `cols` limits the last panel).
            unsafe {
                let wp = p.w.as_ptr().add(panel * k2 * NR * 2);
                let mut acc = [[_mm256_setzero_si256(); 2]; MR];
                for kk in 0..k2 {
                    let w0 = _mm256_loadu_si256(wp.add(kk * 32) as *const __m256i);
                    let w1 = _mm256_loadu_si256(wp.add(kk * 32 + 16) as *const __m256i);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let a = _mm256_set1_epi32(wp0.add(r * k2 + kk).read_unaligned());
                        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(a, w0));
                        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(a, w1));
                    }
                }
                PanelEpilogue::new(&p.com, panel).store(&acc[..rows], op.add(row0 * n), n);
            }
        }
        row0 += MR;
    }
}

/// The AVX2 depthwise kernel for one layer.
#[derive(Debug, Clone)]
pub struct Avx2Depthwise {
    /// Weights `[pair][block][32]`: the two taps' weights interleaved as `vpunpck{l,h}wd`
    /// interleave the activations. Folded bias and scales per block, in accumulator order
    /// (see `lane_channel`).
    com: DwCommon,
}

/// Channel (within a block of 16) held by lane `j` of accumulator `half` (0: from the
/// `unpacklo` products, 1: from `unpackhi`).
fn lane_channel(half: usize, j: usize) -> usize {
    (j / 4) * 8 + half * 4 + j % 4
}

impl Avx2Depthwise {
    /// Pack the layer's weights (`[tap][c]`) and reorder its bias and scales. `None` without
    /// AVX2 or when `c` is not a multiple of 16.
    pub(crate) fn new(mut com: DwCommon) -> Option<Self> {
        let c = com.geom.c;
        if !has_avx2() || c == 0 || !c.is_multiple_of(16) {
            return None;
        }
        let taps = com.geom.taps();
        let (w, bias, scale) = (&com.w, &com.bias, &com.scale);
        assert!(w.len() == taps * c && bias.len() == c && scale.len() == c);
        let pairs = taps.div_ceil(2);
        let blocks = c / 16;
        let wt = |t: usize, ch: usize| if t < taps { w[t * c + ch] } else { 0 };
        let mut packed = vec![0i16; pairs * blocks * 32];
        let mut pb = vec![0i32; c];
        let mut ps = vec![0f32; c];
        for b in 0..blocks {
            for half in 0..2 {
                for j in 0..8 {
                    let ch = b * 16 + lane_channel(half, j);
                    for p in 0..pairs {
                        let dst = &mut packed[(p * blocks + b) * 32..][..32];
                        dst[half * 16 + 2 * j] = wt(2 * p, ch);
                        dst[half * 16 + 2 * j + 1] = wt(2 * p + 1, ch);
                    }
                    pb[b * 16 + half * 8 + j] = bias[ch];
                    ps[b * 16 + half * 8 + j] = scale[ch];
                }
            }
        }
        (com.w, com.bias, com.scale) = (packed, pb, ps);
        Some(Avx2Depthwise { com })
    }

    /// `x`: `[h][w][c]`; `out`: the output rows `rows` of `[oh][ow][c]`.
    pub fn run(&self, x: &[u8], h: usize, w: usize, rows: Range<usize>, out: &mut [u8]) {
        let g = &self.com.geom;
        let c = g.c;
        let pairs = g.taps().div_ceil(2);
        assert!(c.is_multiple_of(16));
        let (_, ow) = self
            .com
            .checked_run(x, (h, w), (&rows, out), pairs * (c / 16) * 32);
        // SAFETY: AVX2 was detected at construction; every length the kernel relies on is
        // asserted above, `rows` within the output and `out` exactly those rows.
        unsafe { dw_avx2(self, x, h, w, rows, ow, out) }
    }
}

/// # Safety
/// The CPU has AVX2; the lengths `Avx2Depthwise::run` asserts hold: `rows` are output rows of
/// the layer for `h × w`, `ow` its output width, `out` exactly those rows.
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_avx2(
    p: &Avx2Depthwise,
    x: &[u8],
    h: usize,
    w: usize,
    rows: Range<usize>,
    ow: usize,
    out: &mut [u8],
) {
    let p = &p.com;
    let g = &p.geom;
    let c = g.c;
    let taps = g.taps();
    let pairs = taps.div_ceil(2);
    let blocks = c / 16;
    let lo = _mm256_set1_ps(-p.y_zero as f32);
    let hi = _mm256_set1_ps((255 - p.y_zero) as f32);
    let zero = _mm256_set1_epi32(p.y_zero);
    // Row pointers of each tap of up to four neighbouring outputs (2·pairs of them each; an
    // odd last one reads the pad row with a zero weight).
    let mut ptrs: [Vec<*const u8>; 4] = std::array::from_fn(|_| vec![p.pad.as_ptr(); pairs * 2]);
    let q = DwQuant { lo, hi, zero };
    for oy in rows.clone() {
        let mut ox = 0;
        while ox < ow {
            let n = (ow - ox).min(4);
            for (i, ptrs) in ptrs.iter_mut().enumerate().take(n) {
                g.tap_rows(x, (h, w), (oy, ox + i), &p.pad, |t, r| ptrs[t] = r.as_ptr());
            }
            let dst = out[((oy - rows.start) * ow + ox) * c..][..n * c].as_mut_ptr();
            for b in 0..blocks {
                // SAFETY: every pointer in `ptrs[..n]` starts a row of c readable bytes and
                // b * 16 + 16 <= c; the packed weights hold pairs * blocks * 32 values and the
                // biases/scales c values; `dst` is n rows of c bytes.
                unsafe {
                    match n {
                        4 => dw_block::<4>(p, [&ptrs[0], &ptrs[1], &ptrs[2], &ptrs[3]], b, &q, dst),
                        3 => dw_block::<3>(p, [&ptrs[0], &ptrs[1], &ptrs[2]], b, &q, dst),
                        2 => dw_block::<2>(p, [&ptrs[0], &ptrs[1]], b, &q, dst),
                        _ => dw_block::<1>(p, [&ptrs[0]], b, &q, dst),
                    }
                }
            }
            ox += n;
        }
    }
}

/// The output range and zero point of a depthwise layer, as vectors.
struct DwQuant {
    lo: __m256,
    hi: __m256,
    zero: __m256i,
}

/// Channels `b·16 .. b·16 + 16` of `N` neighbouring outputs (one weight load serves all `N`):
/// output `i` reads its taps through `ptrs[i]` and is written at `dst + i·c`.
///
/// # Safety
/// The CPU has AVX2; every pointer in `ptrs[i][..2·pairs]` starts a row of `c` readable bytes,
/// `b·16 + 16 <= c`, and `dst` is `N` rows of `c` writable bytes.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dw_block<const N: usize>(
    p: &DwCommon,
    ptrs: [&[*const u8]; N],
    b: usize,
    q: &DwQuant,
    dst: *mut u8,
) {
    let c = p.geom.c;
    let pairs = p.geom.taps().div_ceil(2);
    let blocks = c / 16;
    debug_assert!(b < blocks && ptrs.iter().all(|r| r.len() >= 2 * pairs));
    debug_assert!(p.w.len() >= pairs * blocks * 32 && p.bias.len() >= c && p.scale.len() >= c);
    // SAFETY: the caller's contract (asserted above in debug builds) covers every read and
    // write below: weights below pairs·blocks·32, bias and scale below c, `dst` below N·c.
    unsafe {
        let bias_a = _mm256_loadu_si256(p.bias.as_ptr().add(b * 16) as *const _);
        let bias_b = _mm256_loadu_si256(p.bias.as_ptr().add(b * 16 + 8) as *const _);
        let mut acc = [[bias_a, bias_b]; N];
        for k in 0..pairs {
            let wp = p.w.as_ptr().add((k * blocks + b) * 32);
            let wl = _mm256_loadu_si256(wp as *const _);
            let wh = _mm256_loadu_si256(wp.add(16) as *const _);
            for (acc, ptrs) in acc.iter_mut().zip(ptrs) {
                let x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(ptrs[2 * k].add(b * 16) as *const _));
                let x1 =
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(ptrs[2 * k + 1].add(b * 16) as *const _));
                acc[0] =
                    _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), wl));
                acc[1] =
                    _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), wh));
            }
        }
        let sa = _mm256_loadu_ps(p.scale.as_ptr().add(b * 16));
        let sb = _mm256_loadu_ps(p.scale.as_ptr().add(b * 16 + 8));
        for (i, acc) in acc.iter().enumerate() {
            let ia = requant_i32(acc[0], sa, q.lo, q.hi, q.zero);
            let ib = requant_i32(acc[1], sb, q.lo, q.hi, q.zero);
            let words = _mm256_packs_epi32(ia, ib);
            let bytes = _mm256_packus_epi16(words, words);
            let ordered = _mm256_permute4x64_epi64::<0b1000>(bytes);
            _mm_storeu_si128(
                dst.add(i * c + b * 16) as *mut __m128i,
                _mm256_castsi256_si128(ordered),
            );
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn requant_i32(acc: __m256i, scale: __m256, lo: __m256, hi: __m256, zero: __m256i) -> __m256i {
    let f = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale);
    let f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
    _mm256_add_epi32(_mm256_cvtps_epi32(f), zero)
}

/// The float stem's inner kernels on AVX2 + FMA: 32 channels (four registers) per call.
pub(crate) struct StemAvx2;

impl super::layer::Blocks for StemAvx2 {
    const B: usize = 32;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn conv(r: super::layer::Refs, patch: &[&[f32]], c0: usize, o: &mut [f32]) {
        let c = r.c;
        let b: &[f32; 32] = r.conv_b[c0..c0 + 32].try_into().expect("32 biases");
        // SAFETY (whole block): every load and store is of 8 floats inside a slice of 32
        // taken (bounds-checked) just before it; AVX2 and FMA are the caller's contract.
        unsafe {
            let mut acc = super::layer::load4!(_mm256_loadu_ps, b, 8);
            let mut t = 0;
            for row in patch {
                for &v in row.iter() {
                    let w: &[f32; 32] = r.conv_w[t * c + c0..t * c + c0 + 32]
                        .try_into()
                        .expect("32 weights");
                    let x = _mm256_set1_ps(v);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(x, _mm256_loadu_ps(w.as_ptr().add(8 * j)), *a);
                    }
                    t += 1;
                }
            }
            let (lo, hi) = (_mm256_set1_ps(r.clip1.0), _mm256_set1_ps(r.clip1.1));
            let o: &mut [f32; 32] = (&mut o[c0..c0 + 32]).try_into().expect("32 outputs");
            for (j, a) in acc.iter().enumerate() {
                // max first, with the value as its first operand: a NaN becomes `lo`, as
                // `f32::max` does in the portable code.
                let v = _mm256_min_ps(_mm256_max_ps(*a, lo), hi);
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * j), v);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn conv2(
        r: super::layer::Refs,
        patch: &[&[f32]],
        next: &[&[f32]],
        c0: usize,
        o: &mut [f32],
        o2: &mut [f32],
    ) {
        let c = r.c;
        let b: &[f32; 32] = r.conv_b[c0..c0 + 32].try_into().expect("32 biases");
        // SAFETY (whole block): as in `conv`: 8-float accesses inside checked 32-slices.
        unsafe {
            let mut acc = super::layer::load4!(_mm256_loadu_ps, b, 8);
            let mut acc2 = acc;
            let mut t = 0;
            for (row, row2) in patch.iter().zip(next) {
                for (&v, &v2) in row.iter().zip(row2.iter()) {
                    let w: &[f32; 32] = r.conv_w[t * c + c0..t * c + c0 + 32]
                        .try_into()
                        .expect("32 weights");
                    let (x, x2) = (_mm256_set1_ps(v), _mm256_set1_ps(v2));
                    for j in 0..4 {
                        let wj = _mm256_loadu_ps(w.as_ptr().add(8 * j));
                        acc[j] = _mm256_fmadd_ps(x, wj, acc[j]);
                        acc2[j] = _mm256_fmadd_ps(x2, wj, acc2[j]);
                    }
                    t += 1;
                }
            }
            let (lo, hi) = (_mm256_set1_ps(r.clip1.0), _mm256_set1_ps(r.clip1.1));
            for (acc, o) in [(acc, o), (acc2, o2)] {
                let o: &mut [f32; 32] = (&mut o[c0..c0 + 32]).try_into().expect("32 outputs");
                for (j, a) in acc.iter().enumerate() {
                    // As in `conv`: max first, so a NaN becomes `lo`.
                    let v = _mm256_min_ps(_mm256_max_ps(*a, lo), hi);
                    _mm256_storeu_ps(o.as_mut_ptr().add(8 * j), v);
                }
            }
        }
    }

    /// 16 channels × 6 columns a step (12 accumulators; each tap's two weight vectors are
    /// loaded once for the 6 columns), then 1 to 5 columns; channels past the last 16 one
    /// at a time, as [`Blocks::conv`](super::layer::Blocks::conv) leaves them.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn conv_row(r: super::layer::Refs, row: super::layer::ConvRow, dst: &mut [f32]) {
        let c = r.c;
        let patch_len = row.kw * row.cin;
        let taps = row.rows.len() * patch_len;
        assert!(
            dst.len() == row.cols * c && r.conv_w.len() == taps * c && r.conv_b.len() == c,
            "stem: convolution row sizes"
        );
        if row.cols == 0 {
            return;
        }
        // The last column's patch ends inside every row: `conv_cols` reads no further.
        let end = (row.cols - 1) * row.sx * row.cin + patch_len;
        assert!(
            row.rows.iter().all(|x| x.len() >= end),
            "stem: convolution input row"
        );
        let mut c0 = 0;
        while c0 + 16 <= c {
            let mut ox = 0;
            // SAFETY (all calls): the sizes `conv_cols` needs were asserted above; AVX2 and
            // FMA are this function's contract.
            while ox + 6 <= row.cols {
                unsafe { conv_cols::<6>(r, row, ox, c0, dst) };
                ox += 6;
            }
            match row.cols - ox {
                1 => unsafe { conv_cols::<1>(r, row, ox, c0, dst) },
                2 => unsafe { conv_cols::<2>(r, row, ox, c0, dst) },
                3 => unsafe { conv_cols::<3>(r, row, ox, c0, dst) },
                4 => unsafe { conv_cols::<4>(r, row, ox, c0, dst) },
                5 => unsafe { conv_cols::<5>(r, row, ox, c0, dst) },
                _ => {}
            }
            c0 += 16;
        }
        if c0 < c {
            super::stem_pixels::conv_rest(r, row, c0, dst);
        }
    }

    /// 3×3 kernels only (others pixel by pixel): 8 channels × 4 columns a step with the 9
    /// weight vectors held in registers, then 1 to 3 columns; channels past the last 8 one at
    /// a time, as [`Blocks::dw`](super::layer::Blocks::dw) leaves them.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dw_row(r: super::layer::Refs, row: super::layer::DwRow, out: &mut [u8]) {
        if row.rows.len() != 3 || row.kw != 3 {
            // SAFETY: this function's contract.
            return unsafe { super::stem_pixels::dw_row_pixels::<Self>(r, row, out) };
        }
        let c = r.c;
        assert!(
            out.len() == row.cols * c && r.dw_w.len() == 9 * c && r.dw_b.len() == c,
            "stem: depthwise row sizes"
        );
        if row.cols == 0 {
            return;
        }
        // The last column's taps end inside every row: `dw_cols` reads no further.
        let end = ((row.cols - 1) * row.sx + 3) * c;
        assert!(
            row.rows.iter().all(|x| x.len() >= end),
            "stem: depthwise input row"
        );
        let mut c0 = 0;
        while c0 + 8 <= c {
            let mut ox = 0;
            // SAFETY (all calls): the sizes `dw_cols` needs were asserted above; AVX2 and
            // FMA are this function's contract.
            while ox + 4 <= row.cols {
                unsafe { dw_cols::<4>(r, row, ox, c0, out) };
                ox += 4;
            }
            match row.cols - ox {
                1 => unsafe { dw_cols::<1>(r, row, ox, c0, out) },
                2 => unsafe { dw_cols::<2>(r, row, ox, c0, out) },
                3 => unsafe { dw_cols::<3>(r, row, ox, c0, out) },
                _ => {}
            }
            c0 += 8;
        }
        if c0 < c {
            super::stem_pixels::dw_rest(r, row, c0, out);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dw(r: super::layer::Refs, taps: &[&[f32]], c0: usize, o: &mut [u8]) {
        let b: &[f32; 32] = r.dw_b[c0..c0 + 32].try_into().expect("32 biases");
        // SAFETY (whole block): as in `conv`: 8-float accesses inside checked 32-slices.
        unsafe {
            let mut acc = super::layer::load4!(_mm256_loadu_ps, b, 8);
            for (t, px) in taps.iter().enumerate() {
                let x: &[f32; 32] = px[c0..c0 + 32].try_into().expect("32 inputs");
                let w: &[f32; 32] = r.dw_w[t * r.c + c0..t * r.c + c0 + 32]
                    .try_into()
                    .expect("32 weights");
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(x.as_ptr().add(8 * j)),
                        _mm256_loadu_ps(w.as_ptr().add(8 * j)),
                        *a,
                    );
                }
            }
            // Clip, then ONNX QuantizeLinear: x / scale, clamp to the u8 codes, round half
            // to even (vcvtps2dq in the default rounding mode), add the zero point.
            let (c_lo, c_hi) = (_mm256_set1_ps(r.clip2.0), _mm256_set1_ps(r.clip2.1));
            let z = r.q.zero.clamp(0, 255);
            let (q_lo, q_hi) = (_mm256_set1_ps(-z as f32), _mm256_set1_ps((255 - z) as f32));
            let (scale, zero) = (_mm256_set1_ps(r.q.scale), _mm256_set1_epi32(z));
            let mut ints = [_mm256_setzero_si256(); 4];
            for (i, a) in ints.iter_mut().zip(&acc) {
                let v = _mm256_min_ps(_mm256_max_ps(*a, c_lo), c_hi);
                let v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(v, scale), q_lo), q_hi);
                *i = _mm256_add_epi32(_mm256_cvtps_epi32(v), zero);
            }
            // i32 → u8 (values are in 0..=255): packs interleave 128-bit lanes, the permute
            // restores the order.
            let w01 = _mm256_packs_epi32(ints[0], ints[1]);
            let w23 = _mm256_packs_epi32(ints[2], ints[3]);
            let bytes = _mm256_packus_epi16(w01, w23);
            let ordered =
                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            let o: &mut [u8; 32] = (&mut o[c0..c0 + 32]).try_into().expect("32 outputs");
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, ordered);
        }
    }
}

/// Convolution columns `ox..ox + N`, channels `c0..c0 + 16`, each summed as
/// [`StemAvx2`]'s `conv` sums it: bias, then every tap in order with a fused multiply-add.
///
/// # Safety
/// AVX2 and FMA; `c0 + 16 <= r.c`; `ox + N <= row.cols`; every input row holds the patch of
/// column `ox + N - 1`; `r.conv_w` holds every tap's `r.c` weights; `dst` holds `row.cols`
/// pixels.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn conv_cols<const N: usize>(
    r: super::layer::Refs,
    row: super::layer::ConvRow,
    ox: usize,
    c0: usize,
    dst: &mut [f32],
) {
    let c = r.c;
    let step = row.sx * row.cin;
    let patch_len = row.kw * row.cin;
    // SAFETY (whole block): every offset below stays inside what the contract names.
    unsafe {
        let bias = r.conv_b.as_ptr().add(c0);
        let mut acc = [[_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))]; N];
        let mut t = 0;
        for input in row.rows {
            let x = input.as_ptr().add(ox * step);
            for i in 0..patch_len {
                let w = r.conv_w.as_ptr().add(t * c + c0);
                let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
                for (k, a) in acc.iter_mut().enumerate() {
                    let v = _mm256_set1_ps(*x.add(k * step + i));
                    a[0] = _mm256_fmadd_ps(v, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(v, w1, a[1]);
                }
                t += 1;
            }
        }
        let (lo, hi) = (_mm256_set1_ps(r.clip1.0), _mm256_set1_ps(r.clip1.1));
        for (k, a) in acc.iter().enumerate() {
            let o = dst.as_mut_ptr().add((ox + k) * c + c0);
            // As in `conv`: max first, so a NaN becomes `lo`.
            _mm256_storeu_ps(o, _mm256_min_ps(_mm256_max_ps(a[0], lo), hi));
            _mm256_storeu_ps(o.add(8), _mm256_min_ps(_mm256_max_ps(a[1], lo), hi));
        }
    }
}

/// Depthwise 3×3 columns `ox..ox + N`, channels `c0..c0 + 8`, each summed, clipped and
/// quantised as [`StemAvx2`]'s `dw` does it: bias, then the 9 taps in order with a fused
/// multiply-add.
///
/// # Safety
/// AVX2 and FMA; three input rows; `c0 + 8 <= r.c`; `ox + N <= row.cols`; every input row
/// holds the taps of column `ox + N - 1`; `r.dw_w` holds 9 taps of `r.c` weights; `out` holds
/// `row.cols` pixels.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dw_cols<const N: usize>(
    r: super::layer::Refs,
    row: super::layer::DwRow,
    ox: usize,
    c0: usize,
    out: &mut [u8],
) {
    let c = r.c;
    // SAFETY (whole block): every offset below stays inside what the contract names.
    unsafe {
        let mut w = [_mm256_setzero_ps(); 9];
        for (t, w) in w.iter_mut().enumerate() {
            *w = _mm256_loadu_ps(r.dw_w.as_ptr().add(t * c + c0));
        }
        let mut acc = [_mm256_loadu_ps(r.dw_b.as_ptr().add(c0)); N];
        for (ky, input) in row.rows.iter().take(3).enumerate() {
            let x = input.as_ptr().add(ox * row.sx * c + c0);
            for kx in 0..3 {
                for (k, a) in acc.iter_mut().enumerate() {
                    let v = _mm256_loadu_ps(x.add((k * row.sx + kx) * c));
                    *a = _mm256_fmadd_ps(v, w[ky * 3 + kx], *a);
                }
            }
        }
        // As in `dw`: clip, divide by the scale, clamp to the u8 codes, round half to even,
        // add the zero point.
        let (c_lo, c_hi) = (_mm256_set1_ps(r.clip2.0), _mm256_set1_ps(r.clip2.1));
        let z = r.q.zero.clamp(0, 255);
        let (q_lo, q_hi) = (_mm256_set1_ps(-z as f32), _mm256_set1_ps((255 - z) as f32));
        let (scale, zero) = (_mm256_set1_ps(r.q.scale), _mm256_set1_epi32(z));
        for (k, a) in acc.iter().enumerate() {
            let v = _mm256_min_ps(_mm256_max_ps(*a, c_lo), c_hi);
            let v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(v, scale), q_lo), q_hi);
            let i = _mm256_add_epi32(_mm256_cvtps_epi32(v), zero);
            // i32 → u8 (values in 0..=255), in order within 128 bits.
            let words =
                _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256::<1>(i));
            let bytes = _mm_packus_epi16(words, words);
            _mm_storel_epi64(
                out.as_mut_ptr().add((ox + k) * c + c0) as *mut __m128i,
                bytes,
            );
        }
    }
}
