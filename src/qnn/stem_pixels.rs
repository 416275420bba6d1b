//! The float stem's generic loops: a whole row pixel by pixel through a kernel's pixel
//! methods ([`Blocks::conv2`], [`Blocks::conv`], [`Blocks::dw`]), for kernels without a row
//! version, and one channel in plain Rust (the portable kernel, and the channels past the last
//! whole block of the SIMD ones).
//!
//! Here, not in [`super::layer`] (which only describes) nor in [`super::stem`] (which the
//! instruction-set kernels must not import): the kernels and the stem both use these.
//!
//! Must not: choose kernels.

use super::arith::quantize;
use super::layer::{Blocks, ConvRow, DwRow, Refs};

/// [`Blocks::conv_row`] pixel by pixel, with the kernel's [`Blocks::conv2`] and
/// [`Blocks::conv`], for kernels without a row version.
///
/// # Safety
/// The CPU has the instructions `K` uses.
#[inline(always)]
pub(crate) unsafe fn conv_row_pixels<K: Blocks>(r: Refs, row: ConvRow, dst: &mut [f32]) {
    let c = r.c;
    let kh = row.rows.len();
    assert!(
        kh <= MAX_TAPS && dst.len() == row.cols * c,
        "stem: convolution row"
    );
    // Two columns at a time (twice the independent sums in flight), then the last.
    let mut ox = 0;
    while ox + 1 < row.cols {
        let (pa, pb) = (patch_of(row, ox), patch_of(row, ox + 1));
        let pair = &mut dst[ox * c..(ox + 2) * c];
        let (oa, ob) = pair.split_at_mut(c);
        let mut c0 = 0;
        while c0 + K::B <= c {
            // SAFETY: the caller checked K's instruction set.
            unsafe { K::conv2(r, &pa[..kh], &pb[..kh], c0, oa, ob) };
            c0 += K::B;
        }
        while c0 < c {
            conv_one(r, &pa[..kh], c0, oa);
            conv_one(r, &pb[..kh], c0, ob);
            c0 += 1;
        }
        ox += 2;
    }
    if ox < row.cols {
        let patch = patch_of(row, ox);
        let o = &mut dst[ox * c..(ox + 1) * c];
        let mut c0 = 0;
        while c0 + K::B <= c {
            // SAFETY: the caller checked K's instruction set.
            unsafe { K::conv(r, &patch[..kh], c0, o) };
            c0 += K::B;
        }
        while c0 < c {
            conv_one(r, &patch[..kh], c0, o);
            c0 += 1;
        }
    }
}

/// [`Blocks::dw_row`] pixel by pixel with the kernel's [`Blocks::dw`], for kernels without a
/// row version.
///
/// # Safety
/// The CPU has the instructions `K` uses.
#[inline(always)]
pub(crate) unsafe fn dw_row_pixels<K: Blocks>(r: Refs, row: DwRow, out: &mut [u8]) {
    let c = r.c;
    let (kh, kw) = (row.rows.len(), row.kw);
    assert!(
        kh * kw <= MAX_TAPS && out.len() == row.cols * c,
        "stem: depthwise row"
    );
    for ox in 0..row.cols {
        let taps = taps_of(row, ox, c);
        let o = &mut out[ox * c..(ox + 1) * c];
        let mut c0 = 0;
        while c0 + K::B <= c {
            // SAFETY: the caller checked K's instruction set.
            unsafe { K::dw(r, &taps[..kh * kw], c0, o) };
            c0 += K::B;
        }
        while c0 < c {
            dw_one(r, &taps[..kh * kw], c0, o);
            c0 += 1;
        }
    }
}

/// The patch of convolution output column `ox`: one slice per kernel row (the first
/// `row.rows.len()` are set).
#[inline(always)]
pub(crate) fn patch_of<'a>(row: ConvRow<'a>, ox: usize) -> [&'a [f32]; MAX_TAPS] {
    let patch_len = row.kw * row.cin;
    let x0 = ox * row.sx * row.cin;
    let mut p: [&[f32]; MAX_TAPS] = [&[]; MAX_TAPS];
    for (p, input) in p.iter_mut().zip(row.rows) {
        *p = &input[x0..x0 + patch_len];
    }
    p
}

/// The taps of depthwise output column `ox` (`c` channels a column), row by row (the first
/// `row.rows.len() · row.kw` are set). A plain loop, not `array::from_fn`: that one is not
/// inlined into the target-feature functions and cost more than the taps' arithmetic.
#[inline(always)]
pub(crate) fn taps_of<'a>(row: DwRow<'a>, ox: usize, c: usize) -> [&'a [f32]; MAX_TAPS] {
    let kw = row.kw;
    let mut taps: [&[f32]; MAX_TAPS] = [&[]; MAX_TAPS];
    for (ky, base) in row.rows.iter().enumerate() {
        for kx in 0..kw {
            let at = (ox * row.sx + kx) * c;
            taps[ky * kw + kx] = &base[at..at + c];
        }
    }
    taps
}

/// Channels `c0..` of every column of a convolution row, one at a time: the AVX2 row
/// kernels' channel tail.
#[cfg(target_arch = "x86_64")]
pub(crate) fn conv_rest(r: Refs, row: ConvRow, c0: usize, dst: &mut [f32]) {
    let (c, kh) = (r.c, row.rows.len());
    assert!(kh <= MAX_TAPS, "stem: convolution kernel rows");
    for ox in 0..row.cols {
        let patch = patch_of(row, ox);
        for ch in c0..c {
            conv_one(r, &patch[..kh], ch, &mut dst[ox * c..(ox + 1) * c]);
        }
    }
}

/// Channels `c0..` of every column of a depthwise row, one at a time: the AVX2 row
/// kernels' channel tail.
#[cfg(target_arch = "x86_64")]
pub(crate) fn dw_rest(r: Refs, row: DwRow, c0: usize, out: &mut [u8]) {
    let (c, n) = (r.c, row.rows.len() * row.kw);
    assert!(n <= MAX_TAPS, "stem: depthwise taps");
    for ox in 0..row.cols {
        let taps = taps_of(row, ox, c);
        for ch in c0..c {
            dw_one(r, &taps[..n], ch, &mut out[ox * c..(ox + 1) * c]);
        }
    }
}

/// One channel of the convolution (separate multiply and add).
pub(crate) fn conv_one(r: Refs, patch: &[&[f32]], c0: usize, o: &mut [f32]) {
    let mut acc = r.conv_b[c0];
    let mut t = 0;
    for row in patch {
        for &v in row.iter() {
            acc += v * r.conv_w[t * r.c + c0];
            t += 1;
        }
    }
    o[c0] = acc.max(r.clip1.0).min(r.clip1.1);
}

/// One channel of the depthwise layer, clipped and quantised.
pub(crate) fn dw_one(r: Refs, taps: &[&[f32]], c0: usize, o: &mut [u8]) {
    let mut acc = r.dw_b[c0];
    for (t, px) in taps.iter().enumerate() {
        acc += px[c0] * r.dw_w[t * r.c + c0];
    }
    o[c0] = quantize(acc.max(r.clip2.0).min(r.clip2.1), r.q.scale, r.q.zero);
}

/// Kernel rows and taps the fixed-size tap lists hold (3×3 and 4×4 kernels; larger ones are
/// refused at construction).
pub(crate) const MAX_TAPS: usize = 16;
