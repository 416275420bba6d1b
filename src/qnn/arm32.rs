//! armv7 NEON kernels (32-bit Raspberry Pi OS): requantisation of a row of accumulators, and
//! the depthwise convolution.
//!
//! The armv7 target Rust builds for (`armv7-unknown-linux-gnueabihf`) assumes VFPv3 without
//! NEON, so plain Rust loops compile to scalar code, NEON intrinsics are not stable, and
//! LLVM never vectorises float code for armv7 NEON (it flushes denormals). These kernels are
//! therefore written in assembly (`global_asm!`, with `.fpu neon`), called only where the CPU
//! reports NEON ([`super::cpu::Cpu::neon`], from the kernel's HWCAP). They use q0–q3 and
//! q8–q15 only (d8–d15 are callee-saved in the AAPCS and are not touched).
//!
//! NEON float arithmetic rounds to nearest-even like IEEE, but flushes subnormal results to
//! zero and turns NaN into the default NaN. Layers refuse scales outside [1e-30, 1e30]
//! ([`super::arith::check_scales`]), so no product of an integer accumulator and a scale is
//! subnormal or NaN, and the results equal [`super::arith::requant`] bit for bit (tested
//! under qemu).

use super::arith::requant;
use super::layer::DwCommon;

std::arch::global_asm!(
    ".fpu neon",
    ".arm",
    ".text",
    ".p2align 2",
    ".global teachcam_a32_requant",
    ".type teachcam_a32_requant, %function",
    // void teachcam_a32_requant(const i32 *acc, const i32 *bias, const f32 *scale, u8 *out,
    //                           usize groups_of_8, const f32 consts[4] /* lo, hi, magic, zero bits */)
    "teachcam_a32_requant:",
    "push {{r4, r5, r6, lr}}",
    "ldr r4, [sp, #16]",
    "ldr r5, [sp, #20]",
    "vld1.32 {{d16, d17}}, [r5]",
    "vdup.32 q9, d16[0]",
    "vdup.32 q10, d16[1]",
    "vdup.32 q11, d17[0]",
    "vdup.32 q12, d17[1]",
    "cmp r4, #0",
    "beq 2f",
    "1:",
    "vld1.32 {{d0-d3}}, [r0]!",
    "vld1.32 {{d4-d7}}, [r1]!",
    "vadd.i32 q0, q0, q2",
    "vadd.i32 q1, q1, q3",
    "vld1.32 {{d4-d7}}, [r2]!",
    "bl teachcam_a32_requant8",
    "vst1.8 {{d0}}, [r3]!",
    "subs r4, r4, #1",
    "bne 1b",
    "2:",
    "pop {{r4, r5, r6, pc}}",
    "",
    // Requantise q0, q1 (i32, bias added) with scales q2, q3 into d0 (8 bytes), using the
    // constants in q9 (lo), q10 (hi), q11 (magic), q12 (zero). Clobbers q0-q3 and lr only
    // through the call itself (callers save lr).
    ".p2align 2",
    ".type teachcam_a32_requant8, %function",
    "teachcam_a32_requant8:",
    "vcvt.f32.s32 q0, q0",
    "vcvt.f32.s32 q1, q1",
    "vmul.f32 q0, q0, q2",
    "vmul.f32 q1, q1, q3",
    "vmax.f32 q0, q0, q9",
    "vmax.f32 q1, q1, q9",
    "vmin.f32 q0, q0, q10",
    "vmin.f32 q1, q1, q10",
    "vadd.f32 q0, q0, q11",
    "vadd.f32 q1, q1, q11",
    "vsub.f32 q0, q0, q11",
    "vsub.f32 q1, q1, q11",
    "vcvt.s32.f32 q0, q0",
    "vcvt.s32.f32 q1, q1",
    "vadd.i32 q0, q0, q12",
    "vadd.i32 q1, q1, q12",
    "vqmovun.s32 d0, q0",
    "vqmovun.s32 d1, q1",
    "vqmovn.u16 d0, q0",
    "bx lr",
    "",
    // void teachcam_a32_dw_pixel(const DwArgs *a): one output pixel of a depthwise layer,
    // every block of 8 channels. DwArgs (all 32-bit): rows (const u8 *const *), taps,
    // w (const i16 *, [tap][c]), bias (const i32 *), scale (const f32 *), blocks, c, out,
    // consts[4].
    ".p2align 2",
    ".global teachcam_a32_dw_pixel",
    ".type teachcam_a32_dw_pixel, %function",
    "teachcam_a32_dw_pixel:",
    "push {{r4-r12, lr}}",
    "ldr r1, [r0, #0]",
    "ldr r2, [r0, #4]",
    "ldr r3, [r0, #8]",
    "ldr r4, [r0, #12]",
    "ldr r5, [r0, #16]",
    "ldr r6, [r0, #20]",
    "ldr r7, [r0, #24]",
    "ldr r8, [r0, #28]",
    "add r9, r0, #32",
    "vld1.32 {{d16, d17}}, [r9]",
    "vdup.32 q9, d16[0]",
    "vdup.32 q10, d16[1]",
    "vdup.32 q11, d17[0]",
    "vdup.32 q12, d17[1]",
    "lsl r7, r7, #1",
    "mov r9, #0",
    "3:",
    "vld1.32 {{d26-d29}}, [r4]!",
    "mov r10, #0",
    "add r11, r3, r9, lsl #1",
    "4:",
    "ldr r12, [r1, r10, lsl #2]",
    "add r12, r12, r9",
    "vld1.8 {{d0}}, [r12]",
    "vmovl.u8 q0, d0",
    "vld1.16 {{d2, d3}}, [r11], r7",
    "vmlal.s16 q13, d0, d2",
    "vmlal.s16 q14, d1, d3",
    "add r10, r10, #1",
    "cmp r10, r2",
    "blt 4b",
    "vmov q0, q13",
    "vmov q1, q14",
    "vld1.32 {{d4-d7}}, [r5]!",
    "bl teachcam_a32_requant8",
    "vst1.8 {{d0}}, [r8]!",
    "add r9, r9, #8",
    "subs r6, r6, #1",
    "bne 3b",
    "pop {{r4-r12, pc}}",
);

unsafe extern "C" {
    fn teachcam_a32_requant(
        acc: *const i32,
        bias: *const i32,
        scale: *const f32,
        out: *mut u8,
        groups: usize,
        consts: *const f32,
    );
    fn teachcam_a32_dw_pixel(args: *const DwArgs);
}

/// The constants of the requantisation epilogue for output zero point `zero`.
fn consts(zero: i32) -> [f32; 4] {
    let z = zero.clamp(0, 255);
    [
        -z as f32,
        (255 - z) as f32,
        12_582_912.0,
        f32::from_bits(z as u32),
    ]
}

/// `out[j] = requant(acc[j] + bias[j], scale[j], zero)`, eight at a time in NEON.
///
/// Callers must have checked that the CPU has NEON (this module's kernels are only chosen
/// then).
pub fn requant_row(acc: &[i32], bias: &[i32], scale: &[f32], zero: i32, out: &mut [u8]) {
    let n = out.len();
    assert!(acc.len() >= n && bias.len() >= n && scale.len() >= n);
    let groups = n / 8;
    let k = consts(zero);
    // SAFETY: the CPU has NEON (module contract); the kernel reads 8·groups ≤ n values from
    // acc, bias and scale and writes 8·groups bytes to out, all within the lengths asserted
    // above; it touches no callee-saved register.
    unsafe {
        teachcam_a32_requant(
            acc.as_ptr(),
            bias.as_ptr(),
            scale.as_ptr(),
            out.as_mut_ptr(),
            groups,
            k.as_ptr(),
        )
    };
    for j in groups * 8..n {
        out[j] = requant(acc[j].wrapping_add(bias[j]), scale[j], zero);
    }
}

#[repr(C)]
struct DwArgs {
    rows: *const *const u8,
    taps: usize,
    w: *const i16,
    bias: *const i32,
    scale: *const f32,
    blocks: usize,
    c: usize,
    out: *mut u8,
    consts: [f32; 4],
}

/// The NEON depthwise kernel for one layer (channels in multiples of 8).
#[derive(Debug, Clone)]
pub struct A32Depthwise {
    /// Weights `[tap][c]`.
    com: DwCommon,
}

impl A32Depthwise {
    /// The layer as it is (weights `[tap][c]`); `None` when the channels are not a multiple
    /// of 8.
    pub(crate) fn new(com: DwCommon) -> Option<Self> {
        let c = com.geom.c;
        if c == 0 || !c.is_multiple_of(8) {
            return None;
        }
        Some(A32Depthwise { com })
    }

    /// `x`: `[h][w][c]`; `out`: the output rows `out_rows` of `[oh][ow][c]`.
    pub fn run(
        &self,
        x: &[u8],
        h: usize,
        w: usize,
        out_rows: std::ops::Range<usize>,
        out: &mut [u8],
    ) {
        let p = &self.com;
        let g = &p.geom;
        let c = g.c;
        let taps = g.taps();
        assert!(c.is_multiple_of(8));
        let (_, ow) = p.checked_run(x, (h, w), (&out_rows, out), taps * c);
        let mut rows: Vec<*const u8> = vec![p.pad.as_ptr(); taps];
        let k = consts(p.y_zero);
        let r0 = out_rows.start;
        for oy in out_rows {
            for ox in 0..ow {
                g.tap_rows(x, (h, w), (oy, ox), &p.pad, |t, r| rows[t] = r.as_ptr());
                let dst = &mut out[((oy - r0) * ow + ox) * c..][..c];
                let args = DwArgs {
                    rows: rows.as_ptr(),
                    taps,
                    w: p.w.as_ptr(),
                    bias: p.bias.as_ptr(),
                    scale: p.scale.as_ptr(),
                    blocks: c / 8,
                    c,
                    out: dst.as_mut_ptr(),
                    consts: k,
                };
                // SAFETY: the CPU has NEON (module contract). Every pointer in `rows` starts
                // c readable bytes (a row of `x` or the pad row); the kernel reads bytes
                // [8b, 8b + 8) of each for b < c / 8, weights w[t·c + 8b ..][..8] for t < taps
                // (within taps·c), 8 biases and scales per block (within c), and writes c bytes
                // to `dst`, a row of c bytes. It touches no callee-saved register.
                unsafe { teachcam_a32_dw_pixel(&args) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neon_requantisation_equals_the_scalar_contract() {
        if !crate::qnn::cpu::Cpu::detect().neon {
            return;
        }
        // Accumulators around every rounding tie of a few scales, and saturation both ways.
        for &(scale, zero) in &[
            (0.5f32, 10i32),
            (0.25, 0),
            (0.013, 255),
            (1e-3, 128),
            (3.0, 77),
        ] {
            let n = 1003;
            let acc: Vec<i32> = (0..n as i32).map(|i| (i - 500) * 7 + i % 3).collect();
            let bias: Vec<i32> = (0..n as i32).map(|i| i % 11 - 5).collect();
            let scales = vec![scale; n];
            let mut got = vec![0u8; n];
            requant_row(&acc, &bias, &scales, zero, &mut got);
            let want: Vec<u8> = (0..n)
                .map(|j| requant(acc[j] + bias[j], scale, zero))
                .collect();
            assert_eq!(got, want, "scale {scale} zero {zero}");
        }
    }
}
