//! aarch64 NEON kernels: the depthwise convolution, and the 1×1 convolution for cores without
//! the dot-product extension (Cortex-A72 in the Pi 4, A57 in the Jetson Nano).
//!
//! NEON is part of every aarch64 CPU, so these need no run-time check. Each type keeps the
//! sizes its `unsafe` loops rely on private and checks them against the slices of each call.
//!
//! - **Depthwise**: 3×3 layers with channels in 16s (all of MobileNet's) run a row kernel in
//!   inline assembly: one output row, 16 channels, the 9 taps' weights held in registers as
//!   `i16`, activations widened (`uxtl`/`uxtl2`) and multiplied into `i32` lanes (`smlal`,
//!   `smlal2`). Other shapes and the columns whose taps reach into the left or right padding
//!   take a per-pixel path (intrinsics, 8 channels per step). The activation zero point is
//!   folded into the bias and padding reads `x_zero` bytes (as on x86). The row kernel is
//!   assembly because LLVM turned the intrinsics' `smlal` into 32-bit `mla` on widened
//!   weights, spilled to the stack (the qemu profile showed 1.6× the instructions).
//! - **1×1 without dot product**: activations become `i8` (`x ^ 0x80`, the `128·Σw` term joins
//!   the bias); for each pixel × channel pair, `smull` + `smlal2` multiply 16 `i8` pairs into
//!   8 `i16` lanes (two products per lane: |x8·w| ≤ 128·127, so the pair fits `i16` — the
//!   weights' range is checked at construction) and `sadalp` adds adjacent lanes into `i32`.
//!   That is 16 multiply-adds per 3 instructions, against 4 per `smlal` in tract-linalg's
//!   kernel for these cores. Tile: 4 pixels × 4 channels (16 accumulators); one assembly call
//!   runs every whole panel of a 4-pixel block, requantising from the registers.
//! - Epilogue: `f32` scale, `fcvtns` (round to nearest, ties to even), zero point with
//!   saturation, saturating narrow to `u8`: [`super::arith::requant`]'s result ([`requant4`]).

use std::arch::aarch64::*;
use std::arch::asm;

use std::ops::Range;

use super::layer::DwCommon;
use super::layer::{PointwiseParams, PwCommon};

/// Requantise 4 accumulators (bias included): `f32`, times the scale, rounded to nearest even
/// (`fcvtns`), plus the zero point with saturation. Narrowing the result with saturation to
/// `u8` (`sqxtn`, `sqxtun`) then clamps exactly as [`super::arith::requant`] does: clamping the
/// rounded value to `[-zero, 255 - zero]` and adding `zero` is clamping `rounded + zero` to
/// `[0, 255]`, and rounding before or after the clamp gives the same integer.
#[inline(always)]
pub(crate) fn requant4(a: int32x4_t, scale: float32x4_t, zero: int32x4_t) -> int32x4_t {
    // SAFETY: register-only NEON arithmetic; NEON is part of every aarch64 CPU.
    unsafe { vqaddq_s32(vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(a), scale)), zero) }
}

/// The NEON depthwise kernel for one layer.
///
/// 3×3 layers with whole blocks of 16 channels (every MobileNet depthwise layer) take a row
/// kernel: for one output row and 16 channels, the 9 taps' weights stay in registers and the
/// three input rows are walked with pointers, so each tap of 16 outputs is one load, two
/// widenings and four `smlal`. Columns whose taps reach into the left or right padding, and
/// other shapes, take the per-pixel path.
#[derive(Debug, Clone)]
pub struct NeonDepthwise {
    /// Weights `[tap][c]`.
    com: DwCommon,
}

/// One tap of the 3×3 row kernel: 16 activations loaded from `$at`, widened to `i16` and
/// multiplied by the tap's weights (`v$wl`, `v$wh`) into the accumulators `v26`–`v29`, with
/// `v$x`, `v$lo`, `v$hi` as temporaries.
#[rustfmt::skip]
macro_rules! dw_tap {
    ($at:literal, $wl:literal, $wh:literal, $x:literal, $lo:literal, $hi:literal) => {
        concat!(
            "ldr q", $x, ", ", $at, "\n",
            "uxtl v", $lo, ".8h, v", $x, ".8b\n",
            "uxtl2 v", $hi, ".8h, v", $x, ".16b\n",
            "smlal v26.4s, v", $lo, ".4h, v", $wl, ".4h\n",
            "smlal2 v27.4s, v", $lo, ".8h, v", $wl, ".8h\n",
            "smlal v28.4s, v", $hi, ".4h, v", $wh, ".4h\n",
            "smlal2 v29.4s, v", $hi, ".8h, v", $wh, ".8h\n",
        )
    };
}

/// Channels per step of the 3×3 row kernel.
const DW_BLOCK: usize = 16;

impl NeonDepthwise {
    /// The layer as it is (weights `[tap][c]`).
    pub(crate) fn new(com: DwCommon) -> Self {
        NeonDepthwise { com }
    }

    /// `x`: `[h][w][c]`; `out`: the output rows `out_rows` of `[oh][ow][c]`.
    pub fn run(&self, x: &[u8], h: usize, w: usize, out_rows: Range<usize>, out: &mut [u8]) {
        let p = &self.com;
        let g = &p.geom;
        let c = g.c;
        let taps = g.taps();
        let (_, ow) = p.checked_run(x, (h, w), (&out_rows, out), taps * c);
        let r0 = out_rows.start;
        let fast = g.kernel == (3, 3) && c.is_multiple_of(DW_BLOCK);
        // Output columns whose three taps are inside the row: ox·sx - left ≥ 0 and
        // ox·sx - left + 2 ≤ w - 1.
        let (sx, left) = (g.stride.1, g.pads[1]);
        let first = if fast { left.div_ceil(sx) } else { ow };
        let end = if fast && w + left >= 3 {
            ((w + left - 3) / sx + 1).min(ow)
        } else {
            0
        };
        let (first, end) = (first.min(ow), end.max(first.min(ow)));
        // A row of x_zero bytes as wide as a padded input row: taps in the top or bottom
        // padding read it at the offsets a real row is read at.
        let pad_row = if fast && first < end {
            vec![p.pad[0]; (w + left) * c]
        } else {
            Vec::new()
        };
        let mut rows: Vec<&[u8]> = vec![&p.pad; taps];
        for oy in out_rows {
            for ox in (0..first).chain(end..ow) {
                g.tap_rows(x, (h, w), (oy, ox), &p.pad, |t, r| rows[t] = r);
                self.pixel(&rows, &mut out[((oy - r0) * ow + ox) * c..][..c]);
            }
            if first < end {
                // Each tap row from the input column of tap 0 of output `first`.
                let col = first * sx - left;
                let in_rows: [&[u8]; 3] = std::array::from_fn(|ky| {
                    let iy = (oy * g.stride.0 + ky) as isize - g.pads[0] as isize;
                    if (0..h as isize).contains(&iy) {
                        &x[(iy as usize * w + col) * c..(iy as usize + 1) * w * c]
                    } else {
                        &pad_row[(col + left) * c..]
                    }
                });
                let n = end - first;
                // Each row slice must cover the last output's three taps.
                let need = ((n - 1) * sx + 3) * c;
                assert!(in_rows.iter().all(|r| r.len() >= need));
                let dst = &mut out[((oy - r0) * ow + first) * c..((oy - r0) * ow + end) * c];
                // SAFETY: the rows hold `need` bytes (asserted), `dst` n * c bytes, and the
                // weights, bias and scales their lengths (`checked_run`).
                unsafe { self.row3x3(in_rows.map(<[u8]>::as_ptr), sx * c, n, dst.as_mut_ptr()) };
            }
        }
    }

    /// `n` outputs of one row, 16 channels at a time.
    ///
    /// # Safety
    /// The layer is 3×3 with `c` a multiple of 16; each `rows[ky]` points to
    /// `((n - 1) · step / c + 3) · c` readable bytes; `out` to `n · c` writable bytes; n ≥ 1.
    unsafe fn row3x3(&self, rows: [*const u8; 3], step: usize, n: usize, out: *mut u8) {
        let p = &self.com;
        let c = p.geom.c;
        for cb in (0..c).step_by(DW_BLOCK) {
            // SAFETY: output `o` of this channel block reads bytes `o·step + kx·c + cb .. + 16`
            // of each row (o < n, kx < 3, cb + 16 <= c: the caller's ranges) and writes
            // `o·c + cb .. + 16` of `out`; the weights read are `t·c + cb .. + 16` for t < 9,
            // bias and scales `cb .. + 16`, inside `com`'s arrays (checked by `checked_run`).
            // Every vector register written is declared clobbered.
            unsafe {
                asm!(
                    // The 9 taps' weights, 16 channels each, in v0-v17.
                    "ld1 {{v0.8h, v1.8h}}, [{w}], {wstep}",
                    "ld1 {{v2.8h, v3.8h}}, [{w}], {wstep}",
                    "ld1 {{v4.8h, v5.8h}}, [{w}], {wstep}",
                    "ld1 {{v6.8h, v7.8h}}, [{w}], {wstep}",
                    "ld1 {{v8.8h, v9.8h}}, [{w}], {wstep}",
                    "ld1 {{v10.8h, v11.8h}}, [{w}], {wstep}",
                    "ld1 {{v12.8h, v13.8h}}, [{w}], {wstep}",
                    "ld1 {{v14.8h, v15.8h}}, [{w}], {wstep}",
                    "ld1 {{v16.8h, v17.8h}}, [{w}], {wstep}",
                    "dup v24.4s, {zero:w}",
                    "2:",
                    "ld1 {{v26.4s, v27.4s, v28.4s, v29.4s}}, [{bias}]",
                    dw_tap!("[{r0}]", "0", "1", "18", "19", "20"),
                    dw_tap!("[{r0}, {c}]", "2", "3", "21", "22", "23"),
                    dw_tap!("[{r0}, {c2}]", "4", "5", "18", "19", "20"),
                    dw_tap!("[{r1}]", "6", "7", "21", "22", "23"),
                    dw_tap!("[{r1}, {c}]", "8", "9", "18", "19", "20"),
                    dw_tap!("[{r1}, {c2}]", "10", "11", "21", "22", "23"),
                    dw_tap!("[{r2}]", "12", "13", "18", "19", "20"),
                    dw_tap!("[{r2}, {c}]", "14", "15", "21", "22", "23"),
                    dw_tap!("[{r2}, {c2}]", "16", "17", "18", "19", "20"),
                    "add {r0}, {r0}, {step}",
                    "add {r1}, {r1}, {step}",
                    "add {r2}, {r2}, {step}",
                    "ld1 {{v18.4s, v19.4s, v20.4s, v21.4s}}, [{scale}]",
                    "scvtf v26.4s, v26.4s",
                    "scvtf v27.4s, v27.4s",
                    "scvtf v28.4s, v28.4s",
                    "scvtf v29.4s, v29.4s",
                    "fmul v26.4s, v26.4s, v18.4s",
                    "fmul v27.4s, v27.4s, v19.4s",
                    "fmul v28.4s, v28.4s, v20.4s",
                    "fmul v29.4s, v29.4s, v21.4s",
                    "fcvtns v26.4s, v26.4s",
                    "fcvtns v27.4s, v27.4s",
                    "fcvtns v28.4s, v28.4s",
                    "fcvtns v29.4s, v29.4s",
                    "sqadd v26.4s, v26.4s, v24.4s",
                    "sqadd v27.4s, v27.4s, v24.4s",
                    "sqadd v28.4s, v28.4s, v24.4s",
                    "sqadd v29.4s, v29.4s, v24.4s",
                    "sqxtn v26.4h, v26.4s",
                    "sqxtn2 v26.8h, v27.4s",
                    "sqxtn v28.4h, v28.4s",
                    "sqxtn2 v28.8h, v29.4s",
                    "sqxtun v26.8b, v26.8h",
                    "sqxtun2 v26.16b, v28.8h",
                    "str q26, [{out}]",
                    "add {out}, {out}, {c}",
                    "subs {n}, {n}, #1",
                    "b.ne 2b",
                    w = inout(reg) p.w.as_ptr().add(cb) => _,
                    wstep = in(reg) 2 * c,
                    bias = in(reg) p.bias.as_ptr().add(cb),
                    scale = in(reg) p.scale.as_ptr().add(cb),
                    zero = in(reg) p.y_zero,
                    r0 = inout(reg) rows[0].add(cb) => _,
                    r1 = inout(reg) rows[1].add(cb) => _,
                    r2 = inout(reg) rows[2].add(cb) => _,
                    c = in(reg) c,
                    c2 = in(reg) 2 * c,
                    step = in(reg) step,
                    out = inout(reg) out.add(cb) => _,
                    n = inout(reg) n => _,
                    out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                    out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                    out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                    out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                    out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                    out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                    out("v24") _, out("v26") _, out("v27") _,
                    out("v28") _, out("v29") _,
                    options(nostack),
                );
            }
        }
    }

    /// One output pixel from its tap rows (`c` bytes each), 8 channels at a time.
    fn pixel(&self, rows: &[&[u8]], dst: &mut [u8]) {
        let p = &self.com;
        let c = p.geom.c;
        let blocks = c / 8;
        assert!(rows.len() == p.geom.taps() && rows.iter().all(|r| r.len() == c));
        assert!(dst.len() == c);
        // SAFETY: every row in `rows` and `dst` has c bytes (asserted), `w` has taps * c
        // values, `bias` and `scale` c values (`checked_run`), and b * 8 + 8 <= c.
        unsafe {
            let zero = vdupq_n_s32(p.y_zero);
            for b in 0..blocks {
                let mut a0 = vld1q_s32(p.bias.as_ptr().add(b * 8));
                let mut a1 = vld1q_s32(p.bias.as_ptr().add(b * 8 + 4));
                for (t, row) in rows.iter().enumerate() {
                    let xv = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(row.as_ptr().add(b * 8))));
                    let wv = vld1q_s16(p.w.as_ptr().add(t * c + b * 8));
                    a0 = vmlal_s16(a0, vget_low_s16(xv), vget_low_s16(wv));
                    a1 = vmlal_high_s16(a1, xv, wv);
                }
                let s = p.scale.as_ptr().add(b * 8);
                let q0 = requant4(a0, vld1q_f32(s), zero);
                let q1 = requant4(a1, vld1q_f32(s.add(4)), zero);
                let q = vqmovun_s16(vcombine_s16(vqmovn_s32(q0), vqmovn_s32(q1)));
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
    /// use tract-linalg's SDOT kernel instead (docs/model.md, "Kernel choice per CPU").
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
        // The last 1..=8 values of `k` are a half block (`ldr d`, no `smlal2`).
        let rem = k % 16;
        let shape = (
            k / 16 + usize::from(rem > 8),
            usize::from(rem > 0 && rem <= 8),
        );
        // Activations of one block of 4 pixels as i8, k padded with zeros to k16.
        let mut block = vec![0i8; PR * k16];
        let mut part = [0u8; PR * CR];
        for p0 in (0..pixels).step_by(PR) {
            let rows = (pixels - p0).min(PR);
            for r in 0..PR {
                let src = &x[(p0 + r.min(rows - 1)) * k..][..k];
                for (d, &s) in block[r * k16..r * k16 + k].iter_mut().zip(src) {
                    *d = (s ^ 0x80) as i8;
                }
            }
            // Whole panels of a whole pixel tile are stored in place by one call; the last,
            // partial ones through `part`.
            let in_place = if rows == PR { n / CR } else { 0 };
            let x_ptr = block.as_ptr();
            if in_place > 0 {
                let d = &mut out[p0 * n..][..(PR - 1) * n + in_place * CR];
                // SAFETY: `block` holds 4 rows of k16 = 16 · (full + half) bytes or more
                // (`shape` counts k's blocks of 16, the last maybe half); the weights,
                // biases and scales of `in_place` panels are inside their arrays
                // (`checked_tiles`, and `w` is panels · k16 · 4); `d` is 3 · n + 4 · in_place
                // bytes of `out`.
                unsafe {
                    smull_tiles(
                        x_ptr,
                        k16,
                        (self.w.as_ptr(), in_place),
                        shape,
                        (bias.as_ptr(), scale.as_ptr(), y_zero),
                        (d.as_mut_ptr(), n),
                    )
                };
            }
            for panel in in_place..panels {
                let cols = (n - panel * CR).min(CR);
                let wp = &self.w[panel * k16 * CR..][..k16 * CR];
                let (b, s) = (&bias[panel * CR..][..CR], &scale[panel * CR..][..CR]);
                // SAFETY: as above, for one panel (sliced here) into the 16 bytes of `part`.
                unsafe {
                    smull_tiles(
                        x_ptr,
                        k16,
                        (wp.as_ptr(), 1),
                        shape,
                        (b.as_ptr(), s.as_ptr(), y_zero),
                        (part.as_mut_ptr(), CR),
                    )
                };
                for r in 0..rows {
                    out[(p0 + r) * n + panel * CR..][..cols]
                        .copy_from_slice(&part[r * CR..][..cols]);
                }
            }
        }
    }
}

/// One pixel × channel pair of the 1×1 kernel without dot product: `$first` 8 products of
/// `i8` pairs (`smull`), `$second` adds the upper 8 (`smlal2`, or nothing for a half block),
/// then `$acc` (`saddlp` to start, `sadalp` to accumulate) adds adjacent `i16` lanes into the
/// pair's `i32` accumulator `v$a`. Activations in `v$p`, weights in `v$c`, temporary `v$t`.
#[rustfmt::skip]
macro_rules! pair {
    (full, $acc:literal, $p:literal, $c:literal, $t:literal, $a:literal) => {
        concat!(
            "smull v", $t, ".8h, v", $p, ".8b, v", $c, ".8b\n", "smlal2 v", $t, ".8h, v", $p, ".16b, v", $c, ".16b\n", $acc, " v", $a, ".4s, v", $t, ".8h\n",
        )
    };
    (half, $acc:literal, $p:literal, $c:literal, $t:literal, $a:literal) => {
        concat!(
            "smull v", $t, ".8h, v", $p, ".8b, v", $c, ".8b\n", $acc, " v", $a, ".4s, v", $t, ".8h\n",
        )
    };
}

/// The 16 pairs of a 4 × 4 tile: pixels `v0`–`v3`, channels `v4`–`v7`, accumulators
/// `v16`–`v31` (pixel-major), temporaries `v8`–`v15`.
#[rustfmt::skip]
macro_rules! pairs16 {
    ($kind:tt, $acc:literal) => {
        concat!(
            pair!($kind, $acc, "0", "4", "8", "16"),
            pair!($kind, $acc, "0", "5", "9", "17"),
            pair!($kind, $acc, "0", "6", "10", "18"),
            pair!($kind, $acc, "0", "7", "11", "19"),
            pair!($kind, $acc, "1", "4", "12", "20"),
            pair!($kind, $acc, "1", "5", "13", "21"),
            pair!($kind, $acc, "1", "6", "14", "22"),
            pair!($kind, $acc, "1", "7", "15", "23"),
            pair!($kind, $acc, "2", "4", "8", "24"),
            pair!($kind, $acc, "2", "5", "9", "25"),
            pair!($kind, $acc, "2", "6", "10", "26"),
            pair!($kind, $acc, "2", "7", "11", "27"),
            pair!($kind, $acc, "3", "4", "12", "28"),
            pair!($kind, $acc, "3", "5", "13", "29"),
            pair!($kind, $acc, "3", "6", "14", "30"),
            pair!($kind, $acc, "3", "7", "15", "31"),
        )
    };
}

/// Load the next 16 (`q`) or 8 (`d`) activations of the 4 pixels and the 4 channels' next
/// 16 weights.
#[rustfmt::skip]
macro_rules! load_block {
    ($r:literal) => {
        concat!(
            "ldr ", $r, "0, [{xp}]\n",
            "ldr ", $r, "1, [{xp}, {xs}]\n",
            "ldr ", $r, "2, [{xp}, {xs2}]\n",
            "ldr ", $r, "3, [{xp}, {xs3}]\n",
            "add {xp}, {xp}, #16\n",
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64\n",
        )
    };
}

/// Reduce pixel `$a`'s four channel accumulators (`v$a`..`v$a+3` as `$a $b $c $d`) to one
/// register, requantise it (bias `v0`, scales `v1`, zero point `v2`) and store its 4 bytes.
#[rustfmt::skip]
macro_rules! requant_px4 {
    ($a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!(
            "addp v", $a, ".4s, v", $a, ".4s, v", $b, ".4s\n",
            "addp v", $c, ".4s, v", $c, ".4s, v", $d, ".4s\n",
            "addp v", $a, ".4s, v", $a, ".4s, v", $c, ".4s\n",
            "add v", $a, ".4s, v", $a, ".4s, v0.4s\n",
            "scvtf v", $a, ".4s, v", $a, ".4s\n",
            "fmul v", $a, ".4s, v", $a, ".4s, v1.4s\n",
            "fcvtns v", $a, ".4s, v", $a, ".4s\n",
            "sqadd v", $a, ".4s, v", $a, ".4s, v2.4s\n",
            "sqxtn v", $a, ".4h, v", $a, ".4s\n",
            "sqxtun v", $a, ".8b, v", $a, ".8h\n",
            "str s", $a, ", [{o}]\n",
            "add {o}, {o}, {stride}\n",
        )
    };
}

/// `panels` 4 × 4 tiles of the 1×1 kernel without dot product, side by side: for pixel `p`
/// and channel `c` of panel `j`, `bias[4j + c] + Σ_k x_p[k] · w_{4j+c}[k]` (`x` the `i8`
/// block, `w` the panels one after another), requantised with `scale[4j + c]` and `zero` as
/// [`requant4`] does, stored at `out[p · stride + 4j + c]`. Each panel is `full` blocks of 16
/// values, then `half` (0 or 1) block of 8; at least one block.
///
/// # Safety
/// `x` points to 4 rows of `xs` bytes, each at least `16 · full + 8 · half`; `w` to
/// `panels · 64 · (full + half)` bytes; `bias` and `scale` to `4 · panels` values; `out` to
/// `3 · stride + 4 · panels` writable bytes; `full + half ≥ 1`, `panels ≥ 1`.
unsafe fn smull_tiles(
    x: *const i8,
    xs: usize,
    (w, panels): (*const i8, usize),
    (full, half): (usize, usize),
    (bias, scale, zero): (*const i32, *const f32, i32),
    (out, stride): (*mut u8, usize),
) {
    debug_assert!(full + half >= 1 && panels >= 1);
    // SAFETY: per panel, each full block reads 16 bytes of every row from `xp` (reset to `x`
    // per panel, advanced 16 per block) and 64 bytes of `w` (advanced 64); a half block 8 and
    // 64. That is `16 · full + 8 · half` bytes per row and `64 · (full + half)` of `w` per
    // panel, `panels` times: the caller's ranges. The epilogue reads 4 biases and scales per
    // panel (advanced 16 bytes each) and writes 4 bytes at `outp + p · stride` for p < 4,
    // `outp` advancing 4 per panel. Every vector register written is declared clobbered.
    unsafe {
        asm!(
            "1:",
            "mov {xp}, {x}",
            "mov {f}, {full}",
            "mov {o}, {outp}",
            // The first block starts the accumulators (saddlp), the rest add (sadalp).
            "cbz {f}, 3f",
            load_block!("q"),
            pairs16!(full, "saddlp"),
            "subs {f}, {f}, #1",
            "b.eq 4f",
            "2:",
            load_block!("q"),
            pairs16!(full, "sadalp"),
            "subs {f}, {f}, #1",
            "b.ne 2b",
            "b 4f",
            // k ≤ 8: a single half block.
            "3:",
            load_block!("d"),
            pairs16!(half, "saddlp"),
            "b 5f",
            "4:",
            "cbz {half}, 5f",
            load_block!("d"),
            pairs16!(half, "sadalp"),
            "5:",
            "ld1 {{v0.4s}}, [{bias}], #16",
            "ld1 {{v1.4s}}, [{scale}], #16",
            "dup v2.4s, {zero:w}",
            requant_px4!("16", "17", "18", "19"),
            requant_px4!("20", "21", "22", "23"),
            requant_px4!("24", "25", "26", "27"),
            requant_px4!("28", "29", "30", "31"),
            "add {outp}, {outp}, #4",
            "subs {panels}, {panels}, #1",
            "b.ne 1b",
            x = in(reg) x,
            xp = out(reg) _,
            xs = in(reg) xs,
            xs2 = in(reg) 2 * xs,
            xs3 = in(reg) 3 * xs,
            w = inout(reg) w => _,
            panels = inout(reg) panels => _,
            full = in(reg) full,
            f = out(reg) _,
            half = in(reg) half,
            bias = inout(reg) bias => _,
            scale = inout(reg) scale => _,
            zero = in(reg) zero,
            outp = inout(reg) out => _,
            o = out(reg) _,
            stride = in(reg) stride,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack),
        );
    }
}

/// The float stem's inner kernels on NEON (`fmla`): 16 channels (four registers) per call.
pub(crate) struct StemNeon;

impl super::layer::Blocks for StemNeon {
    const B: usize = 16;

    #[inline]
    unsafe fn conv(r: super::layer::Refs, patch: &[&[f32]], c0: usize, o: &mut [f32]) {
        let c = r.c;
        let b: &[f32; 16] = r.conv_b[c0..c0 + 16].try_into().expect("16 biases");
        // SAFETY (whole block): every access is of 4 floats inside a bounds-checked slice of
        // 16 taken just before it; NEON is part of every aarch64 CPU.
        unsafe {
            let mut acc = super::layer::load4!(vld1q_f32, b, 4);
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
    unsafe fn dw(r: super::layer::Refs, taps: &[&[f32]], c0: usize, o: &mut [u8]) {
        let b: &[f32; 16] = r.dw_b[c0..c0 + 16].try_into().expect("16 biases");
        // SAFETY (whole block): as in `conv`.
        unsafe {
            let mut acc = super::layer::load4!(vld1q_f32, b, 4);
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

    #[inline]
    unsafe fn conv_row(r: super::layer::Refs, row: super::layer::ConvRow, dst: &mut [f32]) {
        // SAFETY: the caller's contract is this function's.
        unsafe { super::stem_pixels::conv_row_pixels::<Self>(r, row, dst) }
    }

    #[inline]
    unsafe fn dw_row(r: super::layer::Refs, row: super::layer::DwRow, out: &mut [u8]) {
        // SAFETY: the caller's contract is this function's.
        unsafe { super::stem_pixels::dw_row_pixels::<Self>(r, row, out) }
    }
}
