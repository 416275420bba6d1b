//! Element-wise int8-section ops: the entry quantisation (float NCHW to `u8` NHWC, for models
//! whose stem [`super::stem`] does not cover), the residual adds (float, as QOperator graphs
//! define them), layout-preserving quantisation, and the final dequantise-and-average.
//!
//! Must not: hold weights (those live in the convolution layers).

use super::arith::{QParams, dequantize, quantize};

/// Float NCHW (batch 1) → `u8` NHWC, quantising on the way (the entry of the int8 section).
pub fn quantize_nchw_to_nhwc(x: &[f32], c: usize, hw: usize, q: QParams, out: &mut [u8]) {
    assert_eq!(x.len(), c * hw, "input length");
    assert_eq!(out.len(), c * hw, "output length");
    quantize_transpose(x, c, hw, q, out);
}

/// Quantise a tile of each channel's row into a small buffer (contiguous, vectorised), then
/// scatter the tile into NHWC order.
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

/// Values each part of a split element-wise op gets at least: below that, handing a part to
/// another thread costs more than it saves.
const MIN_PART: usize = 8192;

impl<'a> Operand<'a> {
    fn part(&self, r: std::ops::Range<usize>) -> Operand<'a> {
        match *self {
            Operand::Int8(x, q) => Operand::Int8(&x[r], q),
            Operand::Float(x) => Operand::Float(&x[r]),
        }
    }
}

/// Whether the AVX2 copies of the element-wise loops may run (the same operations on each
/// value, eight at a time, so the same results).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// `f` on contiguous parts of `out` (whole multiples of 64 values, at least [`MIN_PART`]
/// each) with their ranges, split over this thread's pool.
fn for_values<T: Send>(out: &mut [T], f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync) {
    let parts = super::par::ranges(out.len(), super::par::threads(), 64, MIN_PART);
    super::par::for_rows(out, 1, &parts, f);
}

/// Element-wise float `Add` of two operands, as `DequantizeLinear` + `Add` compute it, split
/// over this thread's pool ([`super::par`]).
pub fn add(a: Operand<'_>, b: Operand<'_>, out: &mut [f32]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "add: lengths differ"
    );
    for_values(out, |r, o| {
        let (a, b) = (a.part(r.clone()), b.part(r));
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 was detected.
            return unsafe { add_avx2(a, b, o) };
        }
        add_values(a, b, o)
    });
}

/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_avx2(a: Operand<'_>, b: Operand<'_>, out: &mut [f32]) {
    add_values(a, b, out)
}

#[inline(always)]
fn add_values(a: Operand<'_>, b: Operand<'_>, out: &mut [f32]) {
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

/// `QuantizeLinear` of a float tensor without changing its layout, split over this thread's
/// pool.
pub fn quantize_slice(x: &[f32], q: QParams, out: &mut [u8]) {
    assert_eq!(x.len(), out.len(), "quantize: lengths differ");
    for_values(out, |r, o| {
        let x = &x[r];
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 was detected.
            return unsafe { quantize_avx2(x, q, o) };
        }
        quantize_values(x, q, o)
    });
}

/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], q: QParams, out: &mut [u8]) {
    quantize_values(x, q, out)
}

#[inline(always)]
fn quantize_values(x: &[f32], q: QParams, out: &mut [u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn split_and_vector_adds_and_quantisations_give_the_scalar_values() {
        let n = 5 * MIN_PART + 77;
        let mut r = crate::rng::Rng::new(3);
        let x: Vec<u8> = (0..n).map(|_| (r.normal() * 60.0 + 128.0) as u8).collect();
        let y: Vec<u8> = (0..n).map(|_| (r.normal() * 60.0 + 128.0) as u8).collect();
        let f: Vec<f32> = (0..n).map(|_| r.normal() * 3.0).collect();
        let (qa, qb, qo) = (
            QParams {
                scale: 0.031,
                zero: 7,
            },
            QParams {
                scale: 0.017,
                zero: 130,
            },
            QParams {
                scale: 0.043,
                zero: 121,
            },
        );
        let ops = [
            (Operand::Int8(&x, qa), Operand::Int8(&y, qb)),
            (Operand::Float(&f), Operand::Int8(&y, qb)),
            (Operand::Int8(&x, qa), Operand::Float(&f)),
        ];
        let pool = std::sync::Arc::new(crate::qnn::pool::Pool::new(3).unwrap());
        for (a, b) in ops {
            let mut want = vec![0f32; n];
            add_values(a, b, &mut want);
            let mut want_q = vec![0u8; n];
            quantize_values(&want, qo, &mut want_q);
            for pooled in [false, true] {
                let mut got = vec![0f32; n];
                let mut got_q = vec![0u8; n];
                let mut run = || {
                    add(a, b, &mut got);
                    quantize_slice(&got, qo, &mut got_q);
                };
                if pooled {
                    crate::qnn::par::with_pool(&pool, run);
                } else {
                    run();
                }
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "add differs (pool: {pooled})"
                );
                assert!(got_q == want_q, "quantisation differs (pool: {pooled})");
            }
            let codes: std::collections::BTreeSet<u8> = want_q.iter().copied().collect();
            assert!(codes.len() > 50, "degenerate data: {} codes", codes.len());
        }
    }

    #[test]
    fn entry_quantisation_transposes_nchw_to_nhwc() {
        let q = QParams {
            scale: 1.0,
            zero: 0,
        };
        // 2 channels of 3 pixels; 70 pixels would cross a tile.
        let x = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
        let mut out = [0u8; 6];
        quantize_nchw_to_nhwc(&x, 2, 3, q, &mut out);
        assert_eq!(out, [1, 10, 2, 20, 3, 30]);
        let x: Vec<f32> = (0..2 * 70).map(|i| (i % 200) as f32).collect();
        let mut out = vec![0u8; 140];
        quantize_nchw_to_nhwc(&x, 2, 70, q, &mut out);
        for p in 0..70 {
            assert_eq!(out[p * 2], x[p] as u8);
            assert_eq!(out[p * 2 + 1], x[70 + p] as u8);
        }
    }
}
