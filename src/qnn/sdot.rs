//! The aarch64 1×1 kernel for cores with the dot-product extension (Cortex-A76 in the Pi 5,
//! A78AE in the Jetson Orin): `sdot` by element, straight from the `u8` NHWC activations.
//!
//! Tile: 4 pixels × 16 output channels, sixteen `i32x4` accumulators (`v16`–`v31`). For each
//! block of 16 input channels, each pixel's 16 activations are one register (`ldr q`, flipped
//! to `i8` with one `eor`: `x ^ 0x80 = x - 128`, the `128·Σw` term joins the bias); its four
//! 4-byte lanes are the element operands of `sdot vd.4s, vn.16b, vm.4b[lane]`, whose `vn` holds
//! 4 channels × 4 weights. So a block of 16 is 4 activation loads, 4 `eor`, 4 four-register
//! weight loads and 64 `sdot` (1024 multiply-adds). Unlike tract-linalg's SDOT kernel, the
//! activations are read where they are, not repacked per pixel panel, and the tile is twice
//! as tall. Input channels past the last 16 go 4 at a time (`ldr s`); `k` must be a multiple
//! of 4 (every MobileNet layer is), otherwise the layer takes another kernel.
//!
//! The tile is inline assembly because the dot-product intrinsics are not stable Rust. Its
//! epilogue requantises from the accumulator registers ([`super::arith::requant`]'s
//! arithmetic, as [`super::neon::requant4`] does it) and stores each pixel's 16 bytes: in
//! place for a whole tile, through a 64-byte buffer for the last, partial ones.
//!
//! Must not: be called on a CPU without the dot product ([`super::cpu`] checks, and `new`
//! refuses when this process's CPU lacks it).

use std::arch::asm;

use super::layer::{PointwiseParams, PwCommon};

/// Pixels per tile.
const PR: usize = 4;
/// Output channels per tile.
const CR: usize = 16;

/// The SDOT 1×1 kernel for one layer.
#[derive(Debug, Clone)]
pub struct SdotPointwise {
    /// `[panel of 16 channels][k / 16][lane 4][group 4][channel 4][4]`, then the `k % 16 / 4`
    /// tail blocks `[block][group 4][channel 4][4]`, as `i8`.
    w: Vec<i8>,
    /// Bias folded for `i8` activations, bias and scales padded to whole panels.
    com: PwCommon,
}

/// Sixteen `sdot` of one lane: pixel registers `v0`–`v3` by element `$l` against the weight
/// registers `v4`–`v7`, into `v16`–`v31`.
#[rustfmt::skip]
macro_rules! sdot_lane {
    ($l:literal) => {
        concat!(
            "sdot v16.4s, v4.16b, v0.4b[", $l, "]\n",
            "sdot v17.4s, v5.16b, v0.4b[", $l, "]\n",
            "sdot v18.4s, v6.16b, v0.4b[", $l, "]\n",
            "sdot v19.4s, v7.16b, v0.4b[", $l, "]\n",
            "sdot v20.4s, v4.16b, v1.4b[", $l, "]\n",
            "sdot v21.4s, v5.16b, v1.4b[", $l, "]\n",
            "sdot v22.4s, v6.16b, v1.4b[", $l, "]\n",
            "sdot v23.4s, v7.16b, v1.4b[", $l, "]\n",
            "sdot v24.4s, v4.16b, v2.4b[", $l, "]\n",
            "sdot v25.4s, v5.16b, v2.4b[", $l, "]\n",
            "sdot v26.4s, v6.16b, v2.4b[", $l, "]\n",
            "sdot v27.4s, v7.16b, v2.4b[", $l, "]\n",
            "sdot v28.4s, v4.16b, v3.4b[", $l, "]\n",
            "sdot v29.4s, v5.16b, v3.4b[", $l, "]\n",
            "sdot v30.4s, v6.16b, v3.4b[", $l, "]\n",
            "sdot v31.4s, v7.16b, v3.4b[", $l, "]\n",
        )
    };
}

/// Requantise the four accumulators of one pixel (16 channels; scales in `v4`–`v7`, zero
/// point in `v13`, as [`super::neon::requant4`] and its saturating narrowing do) and store the
/// 16 bytes at `{o}`, then step `{o}` by `{stride}`.
#[rustfmt::skip]
macro_rules! requant_row {
    ($a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!(
            "scvtf v", $a, ".4s, v", $a, ".4s\n",
            "scvtf v", $b, ".4s, v", $b, ".4s\n",
            "scvtf v", $c, ".4s, v", $c, ".4s\n",
            "scvtf v", $d, ".4s, v", $d, ".4s\n",
            "fmul v", $a, ".4s, v", $a, ".4s, v4.4s\n",
            "fmul v", $b, ".4s, v", $b, ".4s, v5.4s\n",
            "fmul v", $c, ".4s, v", $c, ".4s, v6.4s\n",
            "fmul v", $d, ".4s, v", $d, ".4s, v7.4s\n",
            "fcvtns v", $a, ".4s, v", $a, ".4s\n",
            "fcvtns v", $b, ".4s, v", $b, ".4s\n",
            "fcvtns v", $c, ".4s, v", $c, ".4s\n",
            "fcvtns v", $d, ".4s, v", $d, ".4s\n",
            "sqadd v", $a, ".4s, v", $a, ".4s, v13.4s\n",
            "sqadd v", $b, ".4s, v", $b, ".4s, v13.4s\n",
            "sqadd v", $c, ".4s, v", $c, ".4s, v13.4s\n",
            "sqadd v", $d, ".4s, v", $d, ".4s, v13.4s\n",
            "sqxtn v", $a, ".4h, v", $a, ".4s\n",
            "sqxtn2 v", $a, ".8h, v", $b, ".4s\n",
            "sqxtn v", $c, ".4h, v", $c, ".4s\n",
            "sqxtn2 v", $c, ".8h, v", $d, ".4s\n",
            "sqxtun v", $a, ".8b, v", $a, ".8h\n",
            "sqxtun2 v", $a, ".16b, v", $c, ".8h\n",
            "str q", $a, ", [{o}]\n",
            "add {o}, {o}, {stride}\n",
        )
    };
}

/// `panels` 4 × 16 tiles side by side: for pixel `p` (row `x + p · xs`) and channel `c` of
/// panel `j`, `bias[16j + c] + Σ_k (x_p[k] ^ 0x80) as i8 · w_{16j+c}[k]`, requantised with
/// `scale[16j + c]` and `zero` and stored at `out[p · stride + 16j + c]`.
///
/// # Safety
/// The CPU has the dot product; `x` points to 4 rows of `xs` bytes, each at least
/// `16 · blocks + 4 · tail`; `w` to `panels · (256 · blocks + 64 · tail)` readable bytes;
/// `bias` and `scale` to `16 · panels` readable values; `out` to `3 · stride + 16 · panels`
/// writable bytes; `panels ≥ 1`.
#[target_feature(enable = "dotprod")]
unsafe fn tiles(
    (x, xs): (*const u8, usize),
    (w, panels): (*const i8, usize),
    (blocks, tail): (usize, usize),
    (bias, scale, zero): (*const i32, *const f32, i32),
    (out, stride): (*mut u8, usize),
) {
    // SAFETY: the reads stay inside the ranges the caller vouches for. Per panel: 64 bytes of
    // `bias` and of `scale` (each advanced 64); the 16-byte loop runs `blocks` times,
    // advancing the row pointer `xp` (reset to `x` per panel) by 16 and `w` by 256, the tail
    // loop `tail` times, advancing them by 4 and 64; the four 16-byte stores go to
    // `outp + p · stride`, p < 4, `outp` advancing 16 per panel. Every vector
    // register the code writes is declared clobbered; `sdot` needs the dot product (caller).
    unsafe {
        asm!(
            "1:",
            "mov {xp}, {x}",
            "mov {b}, {blocks}",
            "mov {t}, {tail}",
            "mov {o}, {outp}",
            "movi v12.16b, #0x80",
            "ld1 {{v16.4s, v17.4s, v18.4s, v19.4s}}, [{bias}]",
            "ld1 {{v20.4s, v21.4s, v22.4s, v23.4s}}, [{bias}]",
            "ld1 {{v24.4s, v25.4s, v26.4s, v27.4s}}, [{bias}]",
            "ld1 {{v28.4s, v29.4s, v30.4s, v31.4s}}, [{bias}], #64",
            "cbz {b}, 3f",
            "2:",
            "ldr q0, [{xp}]",
            "ldr q1, [{xp}, {xs}]",
            "ldr q2, [{xp}, {xs2}]",
            "ldr q3, [{xp}, {xs3}]",
            "add {xp}, {xp}, #16",
            "eor v0.16b, v0.16b, v12.16b",
            "eor v1.16b, v1.16b, v12.16b",
            "eor v2.16b, v2.16b, v12.16b",
            "eor v3.16b, v3.16b, v12.16b",
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64",
            sdot_lane!("0"),
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64",
            sdot_lane!("1"),
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64",
            sdot_lane!("2"),
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64",
            sdot_lane!("3"),
            "subs {b}, {b}, #1",
            "b.ne 2b",
            "3:",
            "cbz {t}, 5f",
            "4:",
            "ldr s0, [{xp}]",
            "ldr s1, [{xp}, {xs}]",
            "ldr s2, [{xp}, {xs2}]",
            "ldr s3, [{xp}, {xs3}]",
            "add {xp}, {xp}, #4",
            "eor v0.16b, v0.16b, v12.16b",
            "eor v1.16b, v1.16b, v12.16b",
            "eor v2.16b, v2.16b, v12.16b",
            "eor v3.16b, v3.16b, v12.16b",
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64",
            sdot_lane!("0"),
            "subs {t}, {t}, #1",
            "b.ne 4b",
            "5:",
            "ld1 {{v4.4s, v5.4s, v6.4s, v7.4s}}, [{scale}], #64",
            "dup v13.4s, {zero:w}",
            requant_row!("16", "17", "18", "19"),
            requant_row!("20", "21", "22", "23"),
            requant_row!("24", "25", "26", "27"),
            requant_row!("28", "29", "30", "31"),
            "add {outp}, {outp}, #16",
            "subs {panels}, {panels}, #1",
            "b.ne 1b",
            x = in(reg) x,
            xp = out(reg) _,
            xs = in(reg) xs,
            xs2 = in(reg) 2 * xs,
            xs3 = in(reg) 3 * xs,
            w = inout(reg) w => _,
            panels = inout(reg) panels => _,
            blocks = in(reg) blocks,
            b = out(reg) _,
            tail = in(reg) tail,
            t = out(reg) _,
            bias = inout(reg) bias => _,
            scale = inout(reg) scale => _,
            zero = in(reg) zero,
            outp = inout(reg) out => _,
            o = out(reg) _,
            stride = in(reg) stride,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v12") _, out("v13") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack),
        );
    }
}

impl SdotPointwise {
    /// Pack the layer `l` (its bias folded for raw `u8` activations). `None` when `k` is not a
    /// multiple of 4 or this CPU has no dot product.
    pub fn new(l: &PointwiseParams) -> Option<Self> {
        let (n, k, w) = (l.n, l.k, l.w);
        if n == 0
            || k == 0
            || !k.is_multiple_of(4)
            || !std::arch::is_aarch64_feature_detected!("dotprod")
        {
            return None;
        }
        let panels = n.div_ceil(CR);
        let com = PwCommon::new(l, panels * CR, 128);
        let (blocks, tail) = (k / 16, k % 16 / 4);
        let per_panel = k * CR;
        let mut packed = vec![0i8; panels * per_panel];
        let weight = |ch: usize, kk: usize| if ch < n { w[ch * k + kk] } else { 0 };
        for p in 0..panels {
            let dst = &mut packed[p * per_panel..(p + 1) * per_panel];
            let mut at = 0;
            // Blocks of 16: [lane][group][channel][4]; then tail blocks of 4: [group][channel][4].
            let fours = (0..blocks).flat_map(|b| (0..4).map(move |l| b * 16 + l * 4));
            let fours = fours.chain((0..tail).map(|t| blocks * 16 + t * 4));
            for k0 in fours {
                for c in 0..CR {
                    for j in 0..4 {
                        dst[at] = weight(p * CR + c, k0 + j);
                        at += 1;
                    }
                }
            }
            debug_assert_eq!(at, per_panel);
        }
        Some(SdotPointwise { w: packed, com })
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
        let (pixels, panels) = self.com.checked_tiles(x, out, CR);
        assert!(self.w.len() == panels * k * CR && k.is_multiple_of(4));
        if pixels == 0 {
            return;
        }
        let shape = (k / 16, k % 16 / 4);
        let mut part = [0u8; PR * CR];
        // The last pixels when fewer than 4 remain, copied so that rows stay `k` apart.
        let mut last = vec![0u8; PR * k];
        let epi = |panel: usize| {
            let (b, s) = (&bias[panel * CR..][..CR], &scale[panel * CR..][..CR]);
            (b.as_ptr(), s.as_ptr(), y_zero)
        };
        for p0 in (0..pixels).step_by(PR) {
            let rows = (pixels - p0).min(PR);
            let xt = if rows == PR {
                &x[p0 * k..][..PR * k]
            } else {
                last[..rows * k].copy_from_slice(&x[p0 * k..][..rows * k]);
                &last[..]
            };
            // Whole panels of a whole pixel tile are stored in place by one call; the last,
            // partial ones through `part`.
            let in_place = if rows == PR { n / CR } else { 0 };
            if in_place > 0 {
                let d = &mut out[p0 * n..][..(PR - 1) * n + in_place * CR];
                // SAFETY: `new` found the dot product on this CPU; `xt` is 4 rows of `k` =
                // 16 * blocks + 4 * tail bytes; the weights (k * 16 bytes per panel), biases
                // and scales of `in_place` panels are inside their arrays (`checked_tiles`);
                // `d` is 3 * n + 16 * in_place bytes of `out`.
                unsafe {
                    tiles(
                        (xt.as_ptr(), k),
                        (self.w.as_ptr(), in_place),
                        shape,
                        epi(0),
                        (d.as_mut_ptr(), n),
                    )
                };
            }
            for panel in in_place..panels {
                let cols = (n - panel * CR).min(CR);
                let wp = &self.w[panel * k * CR..][..k * CR];
                // SAFETY: as above, for one panel (sliced here) into the 64 bytes of `part`.
                unsafe {
                    tiles(
                        (xt.as_ptr(), k),
                        (wp.as_ptr(), 1),
                        shape,
                        epi(panel),
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
