//! aarch64 NEON kernels: the depthwise convolution, and the 1×1 convolution for cores without
//! the dot-product extension (Cortex-A72 in the Pi 4, A57 in the Jetson Nano).
//!
//! NEON is part of every aarch64 CPU, so these need no run-time check. Each type keeps the
//! sizes its `unsafe` loops rely on private and checks them against the slices of each call.
//!
//! - **Depthwise**: 8 channels per step; activations widened to `i16` (`ushll`), two
//!   `smlal`/`smlal2` per tap into `i32` lanes. The activation zero point is folded into the
//!   bias and padding reads a row of `x_zero` bytes (as on x86).
//! - **1×1 without dot product**: activations become `i8` (`x ^ 0x80`, the `128·Σw` term joins
//!   the bias); for each pixel × channel pair, `smull` + `smlal2` multiply 16 `i8` pairs into
//!   8 `i16` lanes (two products per lane: |x8·w| ≤ 128·127, so the pair fits `i16` — the
//!   weights' range is checked at construction) and `sadalp` adds adjacent lanes into `i32`.
//!   That is 16 multiply-adds per 3 instructions, against 4 per `smlal` in tract-linalg's
//!   kernel for these cores. Tile: 4 pixels × 4 channels (16 accumulators).
//! - Epilogue: `f32` scale, `fcvtns` (round to nearest, ties to even), clamp, zero point,
//!   saturating narrow: [`super::arith::requant`].

use std::arch::aarch64::*;

use super::depthwise::DwCommon;
use super::pointwise::{PointwiseParams, PwCommon};

/// Requantise 8 accumulators (bias included) to 8 bytes.
///
/// # Safety
/// `scale` points to 8 readable `f32`.
#[inline(always)]
unsafe fn requant8(
    a: int32x4_t,
    b: int32x4_t,
    scale: *const f32,
    lo: int32x4_t,
    hi: int32x4_t,
    zero: int32x4_t,
) -> uint8x8_t {
    // SAFETY: `scale` has 8 values (caller).
    unsafe {
        let fa = vmulq_f32(vcvtq_f32_s32(a), vld1q_f32(scale));
        let fb = vmulq_f32(vcvtq_f32_s32(b), vld1q_f32(scale.add(4)));
        // Rounding to an integer then clamping to integer bounds equals clamping then
        // rounding (the order the scalar reference uses).
        let ia = vaddq_s32(vminq_s32(vmaxq_s32(vcvtnq_s32_f32(fa), lo), hi), zero);
        let ib = vaddq_s32(vminq_s32(vmaxq_s32(vcvtnq_s32_f32(fb), lo), hi), zero);
        vqmovn_u16(vcombine_u16(vqmovun_s32(ia), vqmovun_s32(ib)))
    }
}

/// The NEON depthwise kernel for one layer.
#[derive(Debug, Clone)]
pub struct NeonDepthwise {
    /// Weights `[tap][c]`.
    com: DwCommon,
}

impl NeonDepthwise {
    /// The layer as it is (weights `[tap][c]`).
    pub(crate) fn new(com: DwCommon) -> Self {
        NeonDepthwise { com }
    }

    /// `x`: `[h][w][c]`, `out`: `[oh][ow][c]`.
    pub fn run(&self, x: &[u8], h: usize, w: usize, out: &mut [u8]) {
        let p = &self.com;
        let g = &p.geom;
        let c = g.c;
        let taps = g.taps();
        let (oh, ow) = p.checked_run(x, (h, w), out, taps * c);
        let mut rows: Vec<&[u8]> = vec![&p.pad; taps];
        let lo = -p.y_zero;
        let hi = 255 - p.y_zero;
        let blocks = c / 8;
        for oy in 0..oh {
            for ox in 0..ow {
                g.tap_rows(x, (h, w), (oy, ox), &p.pad, |t, r| rows[t] = r);
                let dst = &mut out[(oy * ow + ox) * c..][..c];
                // SAFETY: every row in `rows` and `dst` has c bytes, `w` has taps * c values,
                // `bias` and `scale` c values (asserted above), and b * 8 + 8 <= c.
                unsafe {
                    let (vlo, vhi, vz) = (vdupq_n_s32(lo), vdupq_n_s32(hi), vdupq_n_s32(p.y_zero));
                    for b in 0..blocks {
                        let mut a0 = vld1q_s32(p.bias.as_ptr().add(b * 8));
                        let mut a1 = vld1q_s32(p.bias.as_ptr().add(b * 8 + 4));
                        for (t, row) in rows.iter().enumerate() {
                            let xv =
                                vreinterpretq_s16_u16(vmovl_u8(vld1_u8(row.as_ptr().add(b * 8))));
                            let wv = vld1q_s16(p.w.as_ptr().add(t * c + b * 8));
                            a0 = vmlal_s16(a0, vget_low_s16(xv), vget_low_s16(wv));
                            a1 = vmlal_high_s16(a1, xv, wv);
                        }
                        let q = requant8(a0, a1, p.scale.as_ptr().add(b * 8), vlo, vhi, vz);
                        vst1_u8(dst.as_mut_ptr().add(b * 8), q);
                    }
                }
                // Channels past the last block of 8 (none in MobileNets), in plain Rust.
                for ch in blocks * 8..c {
                    let mut acc = p.bias[ch];
                    for (t, row) in rows.iter().enumerate() {
                        acc += row[ch] as i32 * p.w[t * c + ch] as i32;
                    }
                    dst[ch] = super::arith::requant(acc, p.scale[ch], p.y_zero);
                }
            }
        }
    }
}

const PR: usize = 4;
const CR: usize = 4;

/// The NEON 1×1 kernel for cores without the dot product (see the module doc).
#[derive(Debug, Clone)]
pub struct NeonPointwise {
    /// `k` rounded up to 16.
    k16: usize,
    /// `[panel of 4 channels][k16 / 16][4][16]` `i8`.
    w: Vec<i8>,
    /// Bias folded for `i8` activations (`+128·Σw`), bias and scales padded to whole panels.
    com: PwCommon,
}

impl NeonPointwise {
    /// Pack the layer `l` (its bias folded for raw `u8` activations). `None` when a weight
    /// is -128 (two products could then overflow an `i16` lane). Cores with the dot product
    /// use tract-linalg's SDOT kernel instead (README, "Kernel choice").
    pub fn new(l: &PointwiseParams) -> Option<Self> {
        let (n, k, w) = (l.n, l.k, l.w);
        if n == 0 || k == 0 || w.contains(&i8::MIN) {
            return None;
        }
        let k16 = k.div_ceil(16) * 16;
        let panels = n.div_ceil(CR);
        let com = PwCommon::new(l, panels * CR, 128);
        let mut packed = vec![0i8; panels * k16 * CR];
        for p in 0..panels {
            for kb in 0..k16 / 16 {
                for j in 0..CR {
                    let ch = p * CR + j;
                    if ch >= n {
                        continue;
                    }
                    for i in 0..16 {
                        let kk = kb * 16 + i;
                        if kk < k {
                            packed[((p * (k16 / 16) + kb) * CR + j) * 16 + i] = w[ch * k + kk];
                        }
                    }
                }
            }
        }
        Some(NeonPointwise {
            k16,
            w: packed,
            com,
        })
    }

    /// `x`: `[pixels][k]`, `out`: `[pixels][n]`.
    pub fn run(&self, x: &[u8], out: &mut [u8]) {
        let PwCommon {
            k,
            n,
            ref bias,
            ref scale,
            y_zero,
        } = self.com;
        let k16 = self.k16;
        let (pixels, panels) = self.com.checked_tiles(x, out, CR);
        assert!(self.w.len() == panels * k16 * CR);
        // Activations of one block of 4 pixels as i8, k padded with zeros to k16.
        let mut block = vec![0i8; PR * k16];
        // SAFETY: NEON is part of every aarch64 CPU.
        let (lo, hi, zero) = unsafe {
            (
                vdupq_n_s32(-y_zero),
                vdupq_n_s32(255 - y_zero),
                vdupq_n_s32(y_zero),
            )
        };
        for p0 in (0..pixels).step_by(PR) {
            let rows = (pixels - p0).min(PR);
            for r in 0..PR {
                let src = &x[(p0 + r.min(rows - 1)) * k..][..k];
                for (d, &s) in block[r * k16..r * k16 + k].iter_mut().zip(src) {
                    *d = (s ^ 0x80) as i8;
                }
            }
            for panel in 0..panels {
                // SAFETY: `block` holds PR rows of k16 values; the panel's weights are
                // k16 * CR values from panel * k16 * CR (< w.len(), asserted); bias/scale
                // reads are 4 values from panel * 4 (whole panels, `checked_tiles`); output
                // writes are `cols` bytes per row
                // within out[(p0 + r) * n ..][..n] for r < rows.
                unsafe {
                    let wp = self.w.as_ptr().add(panel * k16 * CR);
                    let bp = block.as_ptr();
                    let mut acc = [[vdupq_n_s32(0); CR]; PR];
                    for kb in 0..k16 / 16 {
                        let a = [
                            vld1q_s8(bp.add(kb * 16)),
                            vld1q_s8(bp.add(k16 + kb * 16)),
                            vld1q_s8(bp.add(2 * k16 + kb * 16)),
                            vld1q_s8(bp.add(3 * k16 + kb * 16)),
                        ];
                        let wk = wp.add(kb * CR * 16);
                        let wv = [
                            vld1q_s8(wk),
                            vld1q_s8(wk.add(16)),
                            vld1q_s8(wk.add(32)),
                            vld1q_s8(wk.add(48)),
                        ];
                        for r in 0..PR {
                            for j in 0..CR {
                                let t = vmull_s8(vget_low_s8(a[r]), vget_low_s8(wv[j]));
                                let t = vmlal_high_s8(t, a[r], wv[j]);
                                acc[r][j] = vpadalq_s16(acc[r][j], t);
                            }
                        }
                    }
                    let bias = vld1q_s32(bias.as_ptr().add(panel * CR));
                    let scale = vld1q_f32(scale.as_ptr().add(panel * CR));
                    let cols = (n - panel * CR).min(CR);
                    for (r, acc_r) in acc.iter().enumerate().take(rows) {
                        let sums = vpaddq_s32(
                            vpaddq_s32(acc_r[0], acc_r[1]),
                            vpaddq_s32(acc_r[2], acc_r[3]),
                        );
                        let f = vmulq_f32(vcvtq_f32_s32(vaddq_s32(sums, bias)), scale);
                        let q = vaddq_s32(vminq_s32(vmaxq_s32(vcvtnq_s32_f32(f), lo), hi), zero);
                        let mut bytes = [0i32; 4];
                        vst1q_s32(bytes.as_mut_ptr(), q);
                        let dst = &mut out[(p0 + r) * n + panel * CR..][..cols];
                        for (d, &v) in dst.iter_mut().zip(&bytes) {
                            *d = v as u8;
                        }
                    }
                }
            }
        }
    }
}

/// The float stem's inner kernels on NEON (`fmla`): 16 channels (four registers) per call.
pub(crate) struct StemNeon;

impl super::stem::Blocks for StemNeon {
    const B: usize = 16;

    #[inline]
    unsafe fn conv(r: super::stem::Refs, patch: &[&[f32]], c0: usize, o: &mut [f32]) {
        let c = r.c;
        let b: &[f32; 16] = r.conv_b[c0..c0 + 16].try_into().expect("16 biases");
        // SAFETY (whole block): every access is of 4 floats inside a bounds-checked slice of
        // 16 taken just before it; NEON is part of every aarch64 CPU.
        unsafe {
            let mut acc = super::stem::load4!(vld1q_f32, b, 4);
            let mut t = 0;
            for row in patch {
                for &v in row.iter() {
                    let w: &[f32; 16] = r.conv_w[t * c + c0..t * c + c0 + 16]
                        .try_into()
                        .expect("16 weights");
                    let x = vdupq_n_f32(v);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = vfmaq_f32(*a, x, vld1q_f32(w.as_ptr().add(4 * j)));
                    }
                    t += 1;
                }
            }
            let (lo, hi) = (vdupq_n_f32(r.clip1.0), vdupq_n_f32(r.clip1.1));
            let o: &mut [f32; 16] = (&mut o[c0..c0 + 16]).try_into().expect("16 outputs");
            for (j, a) in acc.iter().enumerate() {
                // fmaxnm/fminnm: a NaN gives the other operand, as f32::max/min do.
                vst1q_f32(
                    o.as_mut_ptr().add(4 * j),
                    vminnmq_f32(vmaxnmq_f32(*a, lo), hi),
                );
            }
        }
    }

    #[inline]
    unsafe fn dw(r: super::stem::Refs, taps: &[&[f32]], c0: usize, o: &mut [u8]) {
        let b: &[f32; 16] = r.dw_b[c0..c0 + 16].try_into().expect("16 biases");
        // SAFETY (whole block): as in `conv`.
        unsafe {
            let mut acc = super::stem::load4!(vld1q_f32, b, 4);
            for (t, px) in taps.iter().enumerate() {
                let x: &[f32; 16] = px[c0..c0 + 16].try_into().expect("16 inputs");
                let w: &[f32; 16] = r.dw_w[t * r.c + c0..t * r.c + c0 + 16]
                    .try_into()
                    .expect("16 weights");
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = vfmaq_f32(
                        *a,
                        vld1q_f32(x.as_ptr().add(4 * j)),
                        vld1q_f32(w.as_ptr().add(4 * j)),
                    );
                }
            }
            // Clip, then ONNX QuantizeLinear: divide, clamp to the u8 codes, round to nearest
            // even (fcvtns), add the zero point.
            let (c_lo, c_hi) = (vdupq_n_f32(r.clip2.0), vdupq_n_f32(r.clip2.1));
            let z = r.q.zero.clamp(0, 255);
            let (q_lo, q_hi) = (vdupq_n_f32(-z as f32), vdupq_n_f32((255 - z) as f32));
            let (scale, zero) = (vdupq_n_f32(r.q.scale), vdupq_n_s32(z));
            let mut q = [vdupq_n_s32(0); 4];
            for (qi, a) in q.iter_mut().zip(&acc) {
                let v = vminnmq_f32(vmaxnmq_f32(*a, c_lo), c_hi);
                let v = vminnmq_f32(vmaxnmq_f32(vdivq_f32(v, scale), q_lo), q_hi);
                *qi = vaddq_s32(vcvtnq_s32_f32(v), zero);
            }
            let lo8 = vqmovn_u16(vcombine_u16(vqmovun_s32(q[0]), vqmovun_s32(q[1])));
            let hi8 = vqmovn_u16(vcombine_u16(vqmovun_s32(q[2]), vqmovun_s32(q[3])));
            let o: &mut [u8; 16] = (&mut o[c0..c0 + 16]).try_into().expect("16 outputs");
            vst1q_u8(o.as_mut_ptr(), vcombine_u8(lo8, hi8));
        }
    }
}
