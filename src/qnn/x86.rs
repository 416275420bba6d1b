//! x86-64 VNNI kernel for the pointwise (1×1) convolution.
//!
//! `vpdpbusd` multiplies groups of four `u8` activations by four `i8` weights and adds the four
//! products to an `i32` lane without saturation, so the sums are exact (unlike `vpmaddubsw`,
//! which saturates at 16 bits). The weights are packed once at load into panels of 16 output
//! channels × 4 input channels; each activation quadruple is broadcast. The tile is 6 pixels
//! × 16 channels: 12 accumulators, 2 weight registers and a broadcast register, which fits the
//! 16 vector registers of AVX2-class CPUs. The epilogue adds the folded bias, requantises with
//! the per-channel scale (round half to even, the MXCSR default) and stores bytes.
//!
//! Chosen at run time: AVX-VNNI (`vpdpbusd` with VEX encoding), else AVX512-VNNI with VL on
//! 256-bit registers; CPUs with neither use the portable kernel.

use std::arch::x86_64::*;

use super::kernels::Depthwise;

const MR: usize = 6;
const NR: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    AvxVnni,
    Avx512Vnni,
}

/// Weights packed for the VNNI tile, with bias and scales padded to whole panels.
#[derive(Debug, Clone)]
pub struct PackedPointwise {
    isa: Isa,
    k: usize,
    n: usize,
    /// `[panel][k/4][16][4]`.
    w: Vec<i8>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    y_zero: i32,
}

impl PackedPointwise {
    /// Pack `w` (`[n][k]`) when this CPU has VNNI and `k` is a multiple of 4; `None` otherwise.
    pub fn new(
        n: usize,
        k: usize,
        w: &[i8],
        bias: &[i32],
        scale: &[f32],
        y_zero: i32,
    ) -> Option<Self> {
        if std::env::var_os("TEACHCAM_NO_VNNI").is_some() {
            return None;
        }
        let isa = if std::is_x86_feature_detected!("avxvnni") {
            Isa::AvxVnni
        } else if std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512vl")
        {
            Isa::Avx512Vnni
        } else {
            return None;
        };
        if k == 0 || !k.is_multiple_of(4) || n == 0 {
            return None;
        }
        let panels = n.div_ceil(NR);
        let k4 = k / 4;
        let mut packed = vec![0i8; panels * k4 * NR * 4];
        for p in 0..panels {
            for kk in 0..k4 {
                for j in 0..NR {
                    let col = p * NR + j;
                    if col >= n {
                        continue;
                    }
                    for r in 0..4 {
                        packed[((p * k4 + kk) * NR + j) * 4 + r] = w[col * k + kk * 4 + r];
                    }
                }
            }
        }
        let mut b = bias.to_vec();
        b.resize(panels * NR, 0);
        let mut s = scale.to_vec();
        s.resize(panels * NR, 0.0);
        Some(PackedPointwise {
            isa,
            k,
            n,
            w: packed,
            bias: b,
            scale: s,
            y_zero,
        })
    }

    /// Kernel name for reports.
    pub fn name(&self) -> &'static str {
        match self.isa {
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// `x`: `[pixels][k]`, `out`: `[pixels][n]` (lengths checked by the caller).
    pub fn run(&self, x: &[u8], pixels: usize, out: &mut [u8]) {
        assert!(x.len() >= pixels * self.k && out.len() >= pixels * self.n);
        // SAFETY: the ISA was detected at construction; lengths are checked above and every
        // access below stays inside `x[..pixels*k]`, `out[..pixels*n]` and the packed arrays.
        unsafe {
            match self.isa {
                Isa::AvxVnni => run_avxvnni(self, x, pixels, out),
                Isa::Avx512Vnni => run_avx512vnni(self, x, pixels, out),
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn run_avxvnni(p: &PackedPointwise, x: &[u8], pixels: usize, out: &mut [u8]) {
    // SAFETY: forwarded from `PackedPointwise::run`.
    unsafe {
        run_generic(p, x, pixels, out, |a, b, c| {
            _mm256_dpbusd_avx_epi32(a, b, c)
        })
    }
}

#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn run_avx512vnni(p: &PackedPointwise, x: &[u8], pixels: usize, out: &mut [u8]) {
    // SAFETY: forwarded from `PackedPointwise::run`.
    unsafe { run_generic(p, x, pixels, out, |a, b, c| _mm256_dpbusd_epi32(a, b, c)) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn run_generic<F>(p: &PackedPointwise, x: &[u8], pixels: usize, out: &mut [u8], dot: F)
where
    F: Fn(__m256i, __m256i, __m256i) -> __m256i + Copy,
{
    let (k, n) = (p.k, p.n);
    let k4 = k / 4;
    let panels = n.div_ceil(NR);
    let xp = x.as_ptr();
    let op = out.as_mut_ptr();
    let lo = _mm256_set1_ps(-p.y_zero as f32);
    let hi = _mm256_set1_ps((255 - p.y_zero) as f32);
    let zero = _mm256_set1_epi32(p.y_zero);
    for panel in 0..panels {
        // SAFETY (whole block): indices are bounded by panels*k4*64 for the weights,
        // panels*NR for bias/scale, pixels*k for x and pixels*n for out.
        unsafe {
            let wp = p.w.as_ptr().add(panel * k4 * NR * 4);
            let b0 = _mm256_loadu_si256(p.bias.as_ptr().add(panel * NR) as *const __m256i);
            let b1 = _mm256_loadu_si256(p.bias.as_ptr().add(panel * NR + 8) as *const __m256i);
            let s0 = _mm256_loadu_ps(p.scale.as_ptr().add(panel * NR));
            let s1 = _mm256_loadu_ps(p.scale.as_ptr().add(panel * NR + 8));
            let cols = (n - panel * NR).min(NR);
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
                for (r, acc_r) in acc.iter().enumerate().take(rows) {
                    let dst = op.add((row0 + r) * n + panel * NR);
                    let q0 = requant8(acc_r[0], b0, s0, lo, hi, zero);
                    let q1 = requant8(acc_r[1], b1, s1, lo, hi, zero);
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
                row0 += MR;
            }
        }
    }
}

/// Bias, scale, clamp, round half to even, add the zero point, narrow to 8 bytes (low half).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn requant8(
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

/// AVX2 depthwise kernel: 16 channels per step, taps taken in pairs so that `vpmaddwd`
/// multiplies two taps' `u8` activations (widened to `i16`) by their weights and adds the
/// pair into `i32` lanes, exactly. The activation zero point is folded into the bias
/// (`bias - x_zero·Σw`), and padding reads a row of `x_zero` bytes, which the fold cancels,
/// so no subtraction is left in the inner loop.
#[derive(Debug, Clone)]
pub struct PackedDepthwise {
    /// `[pair][block][32]`: the two taps' weights interleaved as `vpunpck{l,h}wd` interleave
    /// the activations.
    w: Vec<i16>,
    /// Folded bias and scales per block, in accumulator order (see `lane_channel`).
    bias: Vec<i32>,
    scale: Vec<f32>,
    /// One pixel of `x_zero` bytes, read for taps in the padding.
    pad: Vec<u8>,
}

/// Channel (within a block of 16) held by lane `j` of accumulator `half` (0: from the
/// `unpacklo` products, 1: from `unpackhi`).
fn lane_channel(half: usize, j: usize) -> usize {
    (j / 4) * 8 + half * 4 + j % 4
}

impl PackedDepthwise {
    /// Pack `d`'s weights (`[tap][c]`, weight zero points already subtracted), bias and
    /// scales when the CPU has AVX2 and `c` is a multiple of 16. The geometry stays in `d`.
    pub fn new(d: &Depthwise) -> Option<Self> {
        let (c, kernel, w, x_zero) = (d.c, d.kernel, &d.w, d.x_zero);
        if !std::is_x86_feature_detected!("avx2") || c == 0 || !c.is_multiple_of(16) {
            return None;
        }
        let taps = kernel.0 * kernel.1;
        let pairs = taps.div_ceil(2);
        let blocks = c / 16;
        let wt = |t: usize, ch: usize| if t < taps { w[t * c + ch] } else { 0 };
        let mut packed = vec![0i16; pairs * blocks * 32];
        for p in 0..pairs {
            for b in 0..blocks {
                let dst = &mut packed[(p * blocks + b) * 32..][..32];
                for half in 0..2 {
                    for j in 0..8 {
                        let ch = b * 16 + lane_channel(half, j);
                        dst[half * 16 + 2 * j] = wt(2 * p, ch);
                        dst[half * 16 + 2 * j + 1] = wt(2 * p + 1, ch);
                    }
                }
            }
        }
        let mut pb = vec![0i32; c];
        let mut ps = vec![0f32; c];
        for b in 0..blocks {
            for half in 0..2 {
                for j in 0..8 {
                    let ch = b * 16 + lane_channel(half, j);
                    let wsum: i32 = (0..taps).map(|t| wt(t, ch) as i32).sum();
                    pb[b * 16 + half * 8 + j] = d.bias[ch] - x_zero * wsum;
                    ps[b * 16 + half * 8 + j] = d.scale[ch];
                }
            }
        }
        Some(PackedDepthwise {
            w: packed,
            bias: pb,
            scale: ps,
            pad: vec![x_zero as u8; c],
        })
    }

    /// `x`: `[h][w][c]`, `out`: `[oh][ow][c]` (sizes checked by the caller); `d` is the
    /// layer this was packed from.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        d: &Depthwise,
        x: &[u8],
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        out: &mut [u8],
    ) {
        assert!(x.len() >= h * w * d.c && out.len() >= oh * ow * d.c);
        assert_eq!(self.pad.len(), d.c, "packed for another layer");
        // SAFETY: AVX2 was detected at construction; pointers stay inside `x`, `self.pad`,
        // the packed arrays and `out` (bounds computed from the checked sizes).
        unsafe { dw_avx2(self, d, x, h, w, oh, ow, out) }
    }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx2(
    p: &PackedDepthwise,
    d: &Depthwise,
    x: &[u8],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    out: &mut [u8],
) {
    let c = d.c;
    let (kh, kw) = d.kernel;
    let taps = kh * kw;
    let pairs = taps.div_ceil(2);
    let blocks = c / 16;
    let lo = _mm256_set1_ps(-d.y_zero as f32);
    let hi = _mm256_set1_ps((255 - d.y_zero) as f32);
    let zero = _mm256_set1_epi32(d.y_zero);
    let mut ptrs = vec![p.pad.as_ptr(); pairs * 2];
    for oy in 0..oh {
        for ox in 0..ow {
            for ky in 0..kh {
                let iy = (oy * d.stride.0 + ky) as isize - d.pads[0] as isize;
                for kx in 0..kw {
                    let ix = (ox * d.stride.1 + kx) as isize - d.pads[1] as isize;
                    let inside = iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize;
                    ptrs[ky * kw + kx] = if inside {
                        x[(iy as usize * w + ix as usize) * c..].as_ptr()
                    } else {
                        p.pad.as_ptr()
                    };
                }
            }
            let dst = out[(oy * ow + ox) * c..][..c].as_mut_ptr();
            for b in 0..blocks {
                // SAFETY: b*16+16 <= c for every pointer (rows of c bytes), and the packed
                // arrays hold pairs*blocks*32 weights and c biases/scales.
                unsafe {
                    let mut acc_a = _mm256_loadu_si256(p.bias.as_ptr().add(b * 16) as *const _);
                    let mut acc_b = _mm256_loadu_si256(p.bias.as_ptr().add(b * 16 + 8) as *const _);
                    for q in 0..pairs {
                        let x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                            ptrs[2 * q].add(b * 16) as *const _
                        ));
                        let x1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                            ptrs[2 * q + 1].add(b * 16) as *const _
                        ));
                        let wp = p.w.as_ptr().add((q * blocks + b) * 32);
                        let wl = _mm256_loadu_si256(wp as *const _);
                        let wh = _mm256_loadu_si256(wp.add(16) as *const _);
                        acc_a = _mm256_add_epi32(
                            acc_a,
                            _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), wl),
                        );
                        acc_b = _mm256_add_epi32(
                            acc_b,
                            _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), wh),
                        );
                    }
                    let sa = _mm256_loadu_ps(p.scale.as_ptr().add(b * 16));
                    let sb = _mm256_loadu_ps(p.scale.as_ptr().add(b * 16 + 8));
                    let ia = requant_i32(acc_a, sa, lo, hi, zero);
                    let ib = requant_i32(acc_b, sb, lo, hi, zero);
                    let words = _mm256_packs_epi32(ia, ib);
                    let bytes = _mm256_packus_epi16(words, words);
                    let ordered = _mm256_permute4x64_epi64::<0b1000>(bytes);
                    _mm_storeu_si128(
                        dst.add(b * 16) as *mut __m128i,
                        _mm256_castsi256_si128(ordered),
                    );
                }
            }
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
