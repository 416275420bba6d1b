//! The arithmetic contract of the int8 path, as scalar reference functions. Every kernel in
//! [`super`] (portable, x86-64, NEON, or driven through tract-linalg) must produce exactly
//! what these functions produce; the fixtures in `tests/fixtures/qnn/` pin them to
//! onnxruntime's CPU kernels.
//!
//! A layer's `i32` accumulator is the exact sum of `(x - x_zero) * w` plus the `i32` bias; it
//! is converted to `f32`, multiplied by the `f32` output scale `x_scale * w_scale / y_scale`
//! (computed in that order), clamped to the `u8` range around the output zero point, rounded
//! half to even and offset by the zero point. Float ops that quantise or dequantise follow
//! ONNX `QuantizeLinear` / `DequantizeLinear` (`round_even(x / scale) + zero`,
//! `(q - zero) * scale`).
//!
//! Must not: depend on any other module (it is the leaf every kernel builds on).

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

/// Clamp `v` to the `u8` codes around `zero` (as offsets from it), round half to even and
/// convert; NaN lands on the low end. `zero` outside `0..=255` is treated as its nearest valid
/// value (layers refuse such zero points at construction).
#[inline(always)]
fn clamp_round(v: f32, zero: i32) -> i32 {
    let z = zero.clamp(0, 255);
    let lo = -z as f32;
    let hi = (255 - z) as f32;
    // `f32::max` returns `lo` for a NaN `v`, so `r` is finite and within [-255, 255].
    let r = round_even_small(v.max(lo).min(hi));
    // SAFETY: `r` is finite and in [-255, 255] (just above), so it is exactly representable
    // as an i32 and the unchecked conversion is defined. (A checked `as` here keeps x86 from
    // vectorising the loops that call this.)
    unsafe { r.to_int_unchecked::<i32>() }
}

/// Refuse output scales that are not finite or outside [1e-30, 1e30]. Real models are far
/// inside (scales of 1e-5 to 1); within it, no product of an integer accumulator and a scale is
/// subnormal, so SIMD units that flush subnormals (armv7 NEON) compute exactly what
/// [`requant`] computes.
pub fn check_scales(scales: &[f32]) -> Result<(), String> {
    match scales.iter().find(|s| !(1e-30..=1e30).contains(*s)) {
        Some(s) => Err(format!("output scale {s} is outside [1e-30, 1e30]")),
        None => Ok(()),
    }
}

/// Quantisation of one tensor: scale and zero point (per tensor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    /// Real value of one step.
    pub scale: f32,
    /// The `u8` code of real zero.
    pub zero: i32,
}

/// Requantise one accumulator (bias already added) to `u8`.
#[inline(always)]
pub fn requant(acc: i32, scale: f32, zero: i32) -> u8 {
    (clamp_round(acc as f32 * scale, zero) + zero.clamp(0, 255)) as u8
}

/// Requantise a row of accumulators: `out[j] = requant(acc[j] + bias[j], scale[j], zero)`.
/// Written so that the compiler vectorises it on every target with SIMD floats.
#[inline(always)]
pub fn requant_row(acc: &[i32], bias: &[i32], scale: &[f32], zero: i32, out: &mut [u8]) {
    let n = out.len();
    let (acc, bias, scale) = (&acc[..n], &bias[..n], &scale[..n]);
    for j in 0..n {
        out[j] = requant(acc[j].wrapping_add(bias[j]), scale[j], zero);
    }
}

/// ONNX `QuantizeLinear` of one value to `u8`.
#[inline(always)]
pub fn quantize(x: f32, scale: f32, zero: i32) -> u8 {
    (clamp_round(x / scale, zero) + zero.clamp(0, 255)) as u8
}

/// ONNX `DequantizeLinear` of one `u8` value.
#[inline(always)]
pub fn dequantize(q: u8, scale: f32, zero: i32) -> f32 {
    (q as i32 - zero) as f32 * scale
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
        assert_eq!(
            quantize(f32::NAN, 1.0, 3),
            0,
            "NaN lands on the low end, never UB"
        );
        let mut out = [0u8; 3];
        requant_row(&[5, 7, -100], &[0, 0, 0], &[0.5, 0.5, 1.0], 10, &mut out);
        assert_eq!(out, [12, 14, 0]);
    }
}
