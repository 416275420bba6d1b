//! The float kernels of the differentiable network: each convolution kind forward, and its
//! transpose (the gradient with respect to the input) backward. Weights are constants here:
//! no weight gradients are ever computed, which halves the backward pass.
//!
//! Layout is planar NCHW with batch 1 (`[c][h][w]`, the ONNX layout of the model file), so a
//! 1×1 convolution is one matrix product whose long dimension (pixels) is contiguous, and a
//! depthwise row update is a contiguous `y += w·x` for stride 1.
//!
//! Must not: allocate per call beyond the caller's scratch buffer (`col`), or know about
//! files and graphs ([`super`] owns those).

/// The element types the network runs in: `f32` for use, `f64` for gradient checks (finite
/// differences need more digits than `f32` keeps).
pub trait Real:
    Copy
    + Default
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
    + Send
    + Sync
    + 'static
{
    /// Conversion from the weights' `f32`.
    fn of(v: f32) -> Self;
    /// `c = α·a·b + β·c` through matrixmultiply (`sgemm`/`dgemm`); same contract.
    ///
    /// # Safety
    /// As `matrixmultiply::sgemm`: every index reached through the strides is inside its
    /// allocation and `c` does not overlap `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
    );
}

impl Real for f32 {
    fn of(v: f32) -> Self {
        v
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
    ) {
        // SAFETY: forwarded contract (see the trait method).
        unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, 1, beta, c, rsc, 1) }
    }
}

impl Real for f64 {
    fn of(v: f32) -> Self {
        v as f64
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
    ) {
        // SAFETY: forwarded contract (see the trait method).
        unsafe { matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, 1, beta, c, rsc, 1) }
    }
}

/// Geometry of one 2-D convolution (batch 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Input channels.
    pub cin: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height and width.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (rows, columns).
    pub stride: (usize, usize),
    /// Padding: top, left, bottom, right (ONNX order `[t, l, b, r]`).
    pub pads: [usize; 4],
    /// Groups (1: ordinary, `cin`: depthwise).
    pub group: usize,
}

impl Geometry {
    /// Output height and width; `None` when the kernel does not fit the padded input.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let ph = self.h + self.pads[0] + self.pads[2];
        let pw = self.w + self.pads[1] + self.pads[3];
        if ph < self.kh || pw < self.kw || self.stride.0 == 0 || self.stride.1 == 0 {
            return None;
        }
        Some((
            (ph - self.kh) / self.stride.0 + 1,
            (pw - self.kw) / self.stride.1 + 1,
        ))
    }

    /// A 1×1, stride-1, unpadded, ungrouped convolution: one matrix product.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == (1, 1)
            && self.pads == [0; 4]
            && self.group == 1
    }

    /// One filter per channel.
    pub fn is_depthwise(&self) -> bool {
        self.group == self.cin && self.cout == self.cin && self.group > 1
    }

    /// Range of output columns `ox` whose tap `k` reads an input column inside `[0, len)`,
    /// for stride `s` and leading pad `pad`: input column is `ox·s + k − pad`.
    fn valid(out: usize, len: usize, s: usize, k: usize, pad: usize) -> (usize, usize) {
        // ox·s + k ≥ pad  ⇔  ox ≥ ceil((pad − k)/s)
        let lo = if pad > k { (pad - k).div_ceil(s) } else { 0 };
        // ox·s + k − pad ≤ len − 1  ⇔  ox ≤ (len − 1 + pad − k)/s
        let hi = if len + pad > k {
            ((len - 1 + pad - k) / s + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// `c[m×n] = a[m×k]·b[k×n] + beta·c` with explicit strides for `a` (row, column), `b` and `c`
/// row-major contiguous. Checks every index the product touches against the slices.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k == 0 || (m - 1) * rsa + (k - 1) * csa < a.len(),
        "gemm: a too short"
    );
    assert!(k == 0 || k * n <= b.len(), "gemm: b too short");
    assert!(m * n <= c.len(), "gemm: c too short");
    // SAFETY: the asserts above bound the largest index read from `a` ((m−1)·rsa + (k−1)·csa),
    // from `b` (k·n − 1, row-major) and written in `c` (m·n − 1, row-major, strides n and 1
    // never alias); `c` is a unique borrow, so it does not overlap `a` or `b`.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            n as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
        );
    }
}

/// Forward convolution: `y = conv(x, weight) + bias`. `weight` is OIHW
/// (`[cout][cin/group][kh][kw]`); `col` is scratch, grown as needed.
pub fn conv_forward<T: Real>(
    g: &Geometry,
    weight: &[T],
    bias: &[T],
    x: &[T],
    y: &mut [T],
    col: &mut Vec<T>,
) {
    let plane = out_plane(g);
    for (row, &b) in y.chunks_exact_mut(plane).zip(bias) {
        row.fill(b);
    }
    conv_add(g, weight, x, y, col, Direction::Forward);
}

/// Backward convolution with respect to the input: `dx += convᵀ(dy, weight)`.
pub fn conv_backward<T: Real>(
    g: &Geometry,
    weight: &[T],
    dy: &[T],
    dx: &mut [T],
    col: &mut Vec<T>,
) {
    conv_add(g, weight, dy, dx, col, Direction::Backward);
}

/// Output pixels per channel.
fn out_plane(g: &Geometry) -> usize {
    let (oh, ow) = g
        .out_hw()
        .expect("geometry checked when the network was built");
    oh * ow
}

/// `dst += conv(src)` (`Forward`: `src` the input, `dst` the output) or `dst += convᵀ(src)`
/// (`Backward`: `src` the output's gradient, `dst` the input's), for every kind of
/// convolution.
fn conv_add<T: Real>(
    g: &Geometry,
    weight: &[T],
    src: &[T],
    dst: &mut [T],
    col: &mut Vec<T>,
    dir: Direction,
) {
    let (oh, ow) = g
        .out_hw()
        .expect("geometry checked when the network was built");
    let plane = oh * ow;
    let (input, output) = (g.cin * g.h * g.w, g.cout * plane);
    let fwd = dir == Direction::Forward;
    assert_eq!(src.len(), if fwd { input } else { output });
    assert_eq!(dst.len(), if fwd { output } else { input });
    let one = T::of(1.0);
    if g.is_pointwise() {
        if fwd {
            gemm(g.cout, g.cin, plane, weight, g.cin, 1, src, one, dst);
        } else {
            // dx[cin × p] += Wᵀ[cin × cout] · dy[cout × p]: W read through transposed strides.
            gemm(g.cin, g.cout, plane, weight, 1, g.cin, src, one, dst);
        }
    } else if g.is_depthwise() {
        depthwise(g, weight, src, dst, (oh, ow), dir);
    } else {
        let (cig, cog) = (g.cin / g.group, g.cout / g.group);
        let kk = cig * g.kh * g.kw;
        col.resize(kk * plane, T::default());
        for grp in 0..g.group {
            let w = &weight[grp * cog * kk..(grp + 1) * cog * kk];
            let xs = grp * cig * g.h * g.w..(grp + 1) * cig * g.h * g.w;
            let ys = grp * cog * plane..(grp + 1) * cog * plane;
            if fwd {
                im2col(g, &src[xs], cig, (oh, ow), col);
                gemm(cog, kk, plane, w, kk, 1, col, one, &mut dst[ys]);
            } else {
                // dcol[kk × p] = Wᵀ[kk × cog] · dy[cog × p]
                gemm(kk, cog, plane, w, 1, kk, &src[ys], T::default(), col);
                col2im(g, col, cig, (oh, ow), &mut dst[xs]);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// `y[o] += w · x[i]`
    Forward,
    /// `dx[i] += w · dy[o]` (the transpose of the same map)
    Backward,
}

/// Depthwise convolution and its transpose share one loop nest: for every channel, kernel
/// tap and output row, a run of output columns pairs with a (strided) run of input columns.
/// In `Forward`, `src` is the input and `dst` the output; in `Backward`, `src` is the
/// output's gradient and `dst` the input's.
fn depthwise<T: Real>(
    g: &Geometry,
    weight: &[T],
    src: &[T],
    dst: &mut [T],
    (oh, ow): (usize, usize),
    dir: Direction,
) {
    let (h, w) = (g.h, g.w);
    let (sh, sw) = g.stride;
    let (pt, pl) = (g.pads[0], g.pads[1]);
    let taps = g.kh * g.kw;
    for c in 0..g.cin {
        let wc = &weight[c * taps..(c + 1) * taps];
        let (in_plane, out_plane) = (c * h * w, c * oh * ow);
        for ky in 0..g.kh {
            let (oy_lo, oy_hi) = Geometry::valid(oh, h, sh, ky, pt);
            for kx in 0..g.kw {
                let (ox_lo, ox_hi) = Geometry::valid(ow, w, sw, kx, pl);
                if ox_lo >= ox_hi {
                    continue;
                }
                let wv = wc[ky * g.kw + kx];
                let n = ox_hi - ox_lo;
                let ix0 = ox_lo * sw + kx - pl;
                for oy in oy_lo..oy_hi {
                    let iy = oy * sh + ky - pt;
                    let o = out_plane + oy * ow + ox_lo;
                    let i = in_plane + iy * w + ix0;
                    match (dir, sw) {
                        (Direction::Forward, 1) => {
                            axpy(&mut dst[o..o + n], wv, &src[i..i + n]);
                        }
                        (Direction::Forward, _) => {
                            let xs = src[i..].iter().step_by(sw);
                            for (d, &s) in dst[o..o + n].iter_mut().zip(xs) {
                                *d += wv * s;
                            }
                        }
                        (Direction::Backward, 1) => {
                            axpy(&mut dst[i..i + n], wv, &src[o..o + n]);
                        }
                        (Direction::Backward, _) => {
                            let ds = dst[i..].iter_mut().step_by(sw);
                            for (d, &s) in ds.zip(&src[o..o + n]) {
                                *d += wv * s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y += a·x`, written so the compiler vectorises it for the baseline target.
#[inline]
fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    for (d, &s) in y.iter_mut().zip(x) {
        *d += a * s;
    }
}

/// Lay out the receptive fields of `cig` input channels as rows of `col`:
/// `col[(ci·kh + ky)·kw + kx][oy·ow + ox]`, zero where the tap falls in the padding.
fn im2col<T: Real>(g: &Geometry, x: &[T], cig: usize, (oh, ow): (usize, usize), col: &mut [T]) {
    col[..cig * g.kh * g.kw * oh * ow].fill(T::default());
    col_pairs(g, cig, (oh, ow), |c, i| col[c] = x[i]);
}

/// The transpose of [`im2col`]: add every column entry back onto the input pixel it came from.
fn col2im<T: Real>(g: &Geometry, col: &[T], cig: usize, (oh, ow): (usize, usize), dx: &mut [T]) {
    col_pairs(g, cig, (oh, ow), |c, i| dx[i] += col[c]);
}

/// Every pair of an [`im2col`] column entry and the input pixel it reads, as indices
/// `f(col, x)` into `col` (`[kk × p]`) and the group's input (`[cig][h][w]`); entries that fall
/// in the padding are skipped.
#[inline(always)]
fn col_pairs(g: &Geometry, cig: usize, (oh, ow): (usize, usize), mut f: impl FnMut(usize, usize)) {
    let plane = oh * ow;
    for ci in 0..cig {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = ((ci * g.kh + ky) * g.kw + kx) * plane;
                let (oy_lo, oy_hi) = Geometry::valid(oh, g.h, g.stride.0, ky, g.pads[0]);
                let (ox_lo, ox_hi) = Geometry::valid(ow, g.w, g.stride.1, kx, g.pads[1]);
                for oy in oy_lo..oy_hi {
                    let iy = oy * g.stride.0 + ky - g.pads[0];
                    for ox in ox_lo..ox_hi {
                        let ix = ox * g.stride.1 + kx - g.pads[1];
                        f(row + oy * ow + ox, (ci * g.h + iy) * g.w + ix);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The textbook definition, one output at a time.
    fn naive(g: &Geometry, weight: &[f32], bias: &[f32], x: &[f32]) -> Vec<f32> {
        let (oh, ow) = g.out_hw().unwrap();
        let (cig, cog) = (g.cin / g.group, g.cout / g.group);
        let mut y = vec![0f32; g.cout * oh * ow];
        for co in 0..g.cout {
            let grp = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bias[co] as f64;
                    for ci in 0..cig {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride.0 + ky) as isize - g.pads[0] as isize;
                                let ix = (ox * g.stride.1 + kx) as isize - g.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((grp * cig + ci) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((co * cig + ci) * g.kh + ky) * g.kw + kx;
                                s += weight[wi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                    y[(co * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
        y
    }

    fn geometries() -> Vec<Geometry> {
        let g = |cin, h, w, cout, k, s, pads, group| Geometry {
            cin,
            h,
            w,
            cout,
            kh: k,
            kw: k,
            stride: (s, s),
            pads,
            group,
        };
        vec![
            g(5, 6, 7, 4, 1, 1, [0; 4], 1),        // pointwise
            g(6, 7, 9, 6, 3, 1, [1, 1, 1, 1], 6),  // depthwise, stride 1
            g(6, 8, 8, 6, 3, 2, [0, 0, 1, 1], 6),  // depthwise, stride 2, end padding
            g(4, 9, 7, 6, 3, 2, [1, 0, 1, 1], 2),  // grouped
            g(3, 8, 10, 5, 3, 2, [0, 0, 1, 1], 1), // the stem's shape
            g(2, 5, 5, 3, 2, 1, [0, 1, 0, 0], 1),  // even kernel, odd padding
        ]
    }

    /// Random weights and input for `g`, and the output length.
    fn random_layer(g: &Geometry, r: &mut Rng) -> (Vec<f32>, Vec<f32>, usize) {
        let (oh, ow) = g.out_hw().unwrap();
        let wlen = g.cout * (g.cin / g.group) * g.kh * g.kw;
        let w: Vec<f32> = (0..wlen).map(|_| r.normal()).collect();
        let x: Vec<f32> = (0..g.cin * g.h * g.w).map(|_| r.normal()).collect();
        (w, x, g.cout * oh * ow)
    }

    #[test]
    fn forward_matches_the_definition_for_every_kind() {
        let mut r = Rng::new(5);
        for g in geometries() {
            let (w, x, ylen) = random_layer(&g, &mut r);
            let b: Vec<f32> = (0..g.cout).map(|_| r.normal()).collect();
            let mut y = vec![0f32; ylen];
            conv_forward(&g, &w, &b, &x, &mut y, &mut Vec::new());
            let want = naive(&g, &w, &b, &x);
            for (a, e) in y.iter().zip(&want) {
                assert!((a - e).abs() < 1e-4, "{g:?}: {a} vs {e}");
            }
        }
    }

    #[test]
    fn backward_is_the_transpose_of_forward() {
        // <conv(x), v> = <x, convᵀ(v)> for the linear part (bias 0): the defining law.
        let mut r = Rng::new(9);
        for g in geometries() {
            let (w, x, ylen) = random_layer(&g, &mut r);
            let zero = vec![0f32; g.cout];
            let v: Vec<f32> = (0..ylen).map(|_| r.normal()).collect();
            let mut y = vec![0f32; v.len()];
            let mut col = Vec::new();
            conv_forward(&g, &w, &zero, &x, &mut y, &mut col);
            let mut dx = vec![0f32; x.len()];
            conv_backward(&g, &w, &v, &mut dx, &mut col);
            let lhs: f64 = y.iter().zip(&v).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }
}
