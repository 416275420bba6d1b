//! Depthwise convolutions (one filter per channel, any kernel size, stride and explicit
//! padding), computed directly on `u8` NHWC activations: no im2col.
//!
//! [`Depthwise`] packs the weights once for one kernel: portable Rust (here), AVX2
//! ([`super::x86`]) or aarch64 NEON ([`super::neon`]); [`super::cpu`] decides which. The SIMD
//! kernels fold the activation zero point into the bias (`bias - x_zero·Σw`) and read a row
//! of `x_zero` bytes for taps in the padding, which the fold cancels, so their inner loops
//! have no subtraction; the sums are the same integers (tested).
//!
//! Must not: pick a kernel by itself.

use super::arith::requant;
use super::cpu::Kernel;

/// Shape of a depthwise layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwGeom {
    /// Channels.
    pub c: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Strides (rows, columns).
    pub stride: (usize, usize),
    /// Padding: top, left, bottom, right (ONNX order).
    pub pads: [usize; 4],
}

impl DwGeom {
    /// Output height and width for an `h × w` input (`None` when the kernel does not fit).
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let ph = h + self.pads[0] + self.pads[2];
        let pw = w + self.pads[1] + self.pads[3];
        if ph < self.kernel.0 || pw < self.kernel.1 {
            return None;
        }
        Some((
            (ph - self.kernel.0) / self.stride.0 + 1,
            (pw - self.kernel.1) / self.stride.1 + 1,
        ))
    }

    /// Taps per channel.
    pub fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    /// Output size of a run on `x` (`[h][w][c]`) into `out`, after checking every length a
    /// kernel's unsafe code relies on: `x` and `out` hold whole images, the weights `weights`
    /// values, and each per-channel array (`bias`, `scale`, pad row, …) `c` values.
    /// Panics otherwise (a caller's bug, never input: shapes are checked at load).
    pub fn checked_run(
        &self,
        x: &[u8],
        (h, w): (usize, usize),
        out: &[u8],
        (weights, expected_weights): (usize, usize),
        per_channel: &[usize],
    ) -> (usize, usize) {
        let c = self.c;
        let (oh, ow) = self.out_size(h, w).expect("input smaller than the kernel");
        assert!(x.len() == h * w * c && out.len() == oh * ow * c);
        assert!(weights == expected_weights && per_channel.iter().all(|&n| n == c));
        (oh, ow)
    }

    /// The input row (`c` values) each tap of output pixel `(oy, ox)` reads, tap by tap in
    /// `[ky][kx]` order: a slice of `x` (`[h][w][c]`), or `pad` where the tap falls in the
    /// padding. The SIMD kernels keep these as row pointers.
    pub fn tap_rows<'a>(
        &self,
        x: &'a [u8],
        (h, w): (usize, usize),
        (oy, ox): (usize, usize),
        pad: &'a [u8],
        mut put: impl FnMut(usize, &'a [u8]),
    ) {
        let (c, (kh, kw)) = (self.c, self.kernel);
        for ky in 0..kh {
            let iy = (oy * self.stride.0 + ky) as isize - self.pads[0] as isize;
            for kx in 0..kw {
                let ix = (ox * self.stride.1 + kx) as isize - self.pads[1] as isize;
                let inside = iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize;
                put(
                    ky * kw + kx,
                    if inside {
                        &x[(iy as usize * w + ix as usize) * c..][..c]
                    } else {
                        pad
                    },
                );
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.c == 0 || self.taps() == 0 || self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(format!("depthwise layer with an empty shape: {self:?}"));
        }
        if self.pads[0] >= self.kernel.0
            || self.pads[2] >= self.kernel.0
            || self.pads[1] >= self.kernel.1
            || self.pads[3] >= self.kernel.1
        {
            // Every output then reads at least one real pixel; MobileNets never pad more.
            return Err(format!(
                "depthwise padding as large as the kernel: {self:?}"
            ));
        }
        Ok(())
    }
}

/// What a depthwise layer is made of, as the ONNX graph gives it.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseParams<'a> {
    /// Shape.
    pub geom: DwGeom,
    /// Weights `[c][kh][kw]` (ONNX `[c][1][kh][kw]`).
    pub w: &'a [i8],
    /// Weight zero point per channel.
    pub w_zero: &'a [i32],
    /// `i32` bias per channel.
    pub bias: &'a [i32],
    /// Output scale per channel.
    pub scale: &'a [f32],
    /// Activation zero point.
    pub x_zero: i32,
    /// Output zero point.
    pub y_zero: i32,
}

impl DepthwiseParams<'_> {
    fn check(&self) -> Result<(), String> {
        self.geom.check()?;
        let c = self.geom.c;
        if self.w.len() != c * self.geom.taps()
            || self.w_zero.len() != c
            || self.bias.len() != c
            || self.scale.len() != c
        {
            return Err(format!(
                "depthwise layer of {c} channels: {} weights, {} zero points, {} biases, {} scales",
                self.w.len(),
                self.w_zero.len(),
                self.bias.len(),
                self.scale.len()
            ));
        }
        if !(0..=255).contains(&self.x_zero) || !(0..=255).contains(&self.y_zero) {
            return Err("depthwise layer: zero points must be u8".into());
        }
        if self.w_zero.iter().any(|z| !(-128..=127).contains(z)) {
            return Err("depthwise layer: weight zero points must be i8".into());
        }
        super::arith::check_scales(self.scale)
    }

    /// Weights minus their zero points, `[tap][c]` (each fits `i16`).
    pub(crate) fn taps_by_channel(&self) -> Vec<i16> {
        let (c, taps) = (self.geom.c, self.geom.taps());
        let mut out = vec![0i16; taps * c];
        for ch in 0..c {
            for t in 0..taps {
                out[t * c + ch] = (self.w[ch * taps + t] as i32 - self.w_zero[ch]) as i16;
            }
        }
        out
    }

    /// `bias - x_zero·Σ_taps w` per channel, for kernels that read raw `u8` activations.
    fn folded_bias(&self, taps_by_channel: &[i16]) -> Vec<i32> {
        let c = self.geom.c;
        (0..c)
            .map(|ch| {
                let sum: i32 = (0..self.geom.taps())
                    .map(|t| taps_by_channel[t * c + ch] as i32)
                    .sum();
                self.bias[ch] - self.x_zero * sum
            })
            .collect()
    }
}

/// What every SIMD depthwise kernel keeps: they read raw `u8` activations, with the
/// activation zero point folded into the bias and a pad row of `x_zero` bytes (module doc).
#[derive(Debug, Clone)]
pub(crate) struct DwCommon {
    /// Shape.
    pub geom: DwGeom,
    /// Weights minus their zero points: `[tap][c]` ([`DepthwiseParams::taps_by_channel`]),
    /// or the kernel's own packing of them.
    pub w: Vec<i16>,
    /// Folded bias (`bias - x_zero·Σw`) per channel.
    pub bias: Vec<i32>,
    /// Output scale per channel.
    pub scale: Vec<f32>,
    /// One pixel of `x_zero` bytes, read for taps in the padding.
    pub pad: Vec<u8>,
    /// Output zero point.
    pub y_zero: i32,
}

impl DwCommon {
    /// `p` with `w` its [`DepthwiseParams::taps_by_channel`] (`p` checked).
    fn new(p: &DepthwiseParams, w: Vec<i16>) -> Self {
        let c = p.geom.c;
        assert!(w.len() == p.geom.taps() * c && p.bias.len() == c && p.scale.len() == c);
        DwCommon {
            geom: p.geom,
            bias: p.folded_bias(&w),
            w,
            scale: p.scale.to_vec(),
            pad: vec![p.x_zero as u8; c],
            y_zero: p.y_zero,
        }
    }

    /// [`DwGeom::checked_run`] on this kernel's arrays, its packed weights being `weights`
    /// values: the output size, every length the kernel's unsafe code relies on checked.
    pub fn checked_run(
        &self,
        x: &[u8],
        (h, w): (usize, usize),
        out: &[u8],
        weights: usize,
    ) -> (usize, usize) {
        self.geom.checked_run(
            x,
            (h, w),
            out,
            (self.w.len(), weights),
            &[self.bias.len(), self.scale.len(), self.pad.len()],
        )
    }
}

#[derive(Debug, Clone)]
enum Imp {
    Portable(Portable),
    #[cfg(target_arch = "x86_64")]
    Avx2(super::x86::Avx2Depthwise),
    #[cfg(target_arch = "aarch64")]
    Neon(super::neon::NeonDepthwise),
    #[cfg(target_arch = "arm")]
    A32(super::arm32::A32Depthwise),
}

/// A depthwise convolution with its weights packed for one kernel.
#[derive(Debug, Clone)]
pub struct Depthwise {
    geom: DwGeom,
    kernel: Kernel,
    imp: Imp,
}

impl Depthwise {
    /// Pack `p` for `kernel`; an error when the parameters are inconsistent or the kernel is
    /// not available here.
    pub fn new(p: &DepthwiseParams, kernel: Kernel) -> Result<Self, String> {
        p.check()?;
        let w = p.taps_by_channel();
        let unavailable = || format!("kernel {} is not available here", kernel.name());
        let imp = match kernel {
            Kernel::Portable => Imp::Portable(Portable {
                bias: p.bias.to_vec(),
                w,
                scale: p.scale.to_vec(),
                x_zero: p.x_zero,
                y_zero: p.y_zero,
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => Imp::Avx2(
                super::x86::Avx2Depthwise::new(DwCommon::new(p, w)).ok_or_else(unavailable)?,
            ),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => Imp::Neon(super::neon::NeonDepthwise::new(DwCommon::new(p, w))),
            #[cfg(target_arch = "arm")]
            Kernel::Neon if super::cpu::Cpu::detect().neon => Imp::A32(
                super::arm32::A32Depthwise::new(DwCommon::new(p, w)).ok_or_else(unavailable)?,
            ),
            _ => return Err(unavailable()),
        };
        Ok(Depthwise {
            geom: p.geom,
            kernel,
            imp,
        })
    }

    /// The layer's shape.
    pub fn geom(&self) -> &DwGeom {
        &self.geom
    }

    /// The kernel this layer runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `x`: `[h][w][c]`; `out`: `[oh][ow][c]` with `(oh, ow)` from [`DwGeom::out_size`].
    pub fn run(&self, x: &[u8], h: usize, w: usize, out: &mut [u8]) {
        let c = self.geom.c;
        let (oh, ow) = self
            .geom
            .out_size(h, w)
            .expect("depthwise input smaller than its kernel");
        assert_eq!(x.len(), h * w * c, "depthwise input length");
        assert_eq!(out.len(), oh * ow * c, "depthwise output length");
        match &self.imp {
            Imp::Portable(p) => p.run(&self.geom, x, h, w, out),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(p) => p.run(x, h, w, out),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(p) => p.run(x, h, w, out),
            #[cfg(target_arch = "arm")]
            Imp::A32(p) => p.run(x, h, w, out),
        }
    }
}

/// Plain Rust: per output pixel, accumulate `(x - x_zero)·w` tap by tap over all channels
/// (vectorised over channels), then requantise.
#[derive(Debug, Clone)]
struct Portable {
    /// `[tap][c]`, zero points subtracted.
    w: Vec<i16>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    x_zero: i32,
    y_zero: i32,
}

impl Portable {
    fn run(&self, g: &DwGeom, x: &[u8], h: usize, w: usize, out: &mut [u8]) {
        let c = g.c;
        let (oh, ow) = g.out_size(h, w).unwrap_or((0, 0));
        let (kh, kw) = g.kernel;
        let xz = self.x_zero as i16;
        let mut acc = vec![0i32; c];
        for oy in 0..oh {
            for ox in 0..ow {
                acc.copy_from_slice(&self.bias);
                for ky in 0..kh {
                    let iy = (oy * g.stride.0 + ky) as isize - g.pads[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * g.stride.1 + kx) as isize - g.pads[1] as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let base = (iy as usize * w + ix as usize) * c;
                        let px = &x[base..base + c];
                        let wt = &self.w[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                        for ((a, &v), &f) in acc.iter_mut().zip(px).zip(wt) {
                            *a += ((v as i16 - xz) as i32) * f as i32;
                        }
                    }
                }
                let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                for ((q, &a), &s) in o.iter_mut().zip(&acc).zip(&self.scale) {
                    *q = requant(a, s, self.y_zero);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qnn::cpu::{Cpu, Layer, runnable_kernels};

    fn params<'a>(
        geom: DwGeom,
        wt: &'a [i8],
        wz: &'a [i32],
        bias: &'a [i32],
        scale: &'a [f32],
    ) -> DepthwiseParams<'a> {
        DepthwiseParams {
            geom,
            w: wt,
            w_zero: wz,
            bias,
            scale,
            x_zero: 37,
            y_zero: 90,
        }
    }

    #[test]
    fn portable_equals_a_naive_convolution() {
        // 2 channels, 4x5 input, 3x3 kernel, stride 2, TF-style padding (0,0,1,1).
        let (c, h, w) = (2usize, 4usize, 5usize);
        let x: Vec<u8> = (0..h * w * c).map(|i| (i * 37 % 251) as u8).collect();
        let wt: Vec<i8> = (0..c * 9)
            .map(|i| (i as i32 * 29 % 255 - 127) as i8)
            .collect();
        let geom = DwGeom {
            c,
            kernel: (3, 3),
            stride: (2, 2),
            pads: [0, 0, 1, 1],
        };
        let p = DepthwiseParams {
            x_zero: 7,
            y_zero: 128,
            ..params(geom, &wt, &[0, 3], &[100, -50], &[0.01, 0.02])
        };
        let d = Depthwise::new(&p, Kernel::Portable).unwrap();
        let (oh, ow) = geom.out_size(h, w).unwrap();
        assert_eq!((oh, ow), (2, 2));
        let mut out = vec![0u8; oh * ow * c];
        d.run(&x, h, w, &mut out);
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut acc = [100, -50][ch];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy * 2 + ky) as i32, (ox * 2 + kx) as i32);
                            if iy < h as i32 && ix < w as i32 {
                                let v = x[(iy as usize * w + ix as usize) * c + ch] as i32 - 7;
                                acc += v * (wt[ch * 9 + ky * 3 + kx] as i32 - [0, 3][ch]);
                            }
                        }
                    }
                    let want = requant(acc, [0.01, 0.02][ch], 128);
                    assert_eq!(out[(oy * ow + ox) * c + ch], want, "at {oy},{ox},{ch}");
                }
            }
        }
    }

    #[test]
    fn every_kernel_on_this_cpu_equals_the_portable_one() {
        let cpu = Cpu::detect();
        let kernels = runnable_kernels(Layer::Depthwise, &cpu);
        let mut ran = std::collections::HashMap::new();
        for &(c, h, w, stride, pads) in &[
            (32usize, 7usize, 9usize, 1usize, [1usize, 1, 1, 1]),
            (48, 8, 5, 2, [0, 0, 1, 1]),
            (16, 3, 3, 2, [1, 1, 1, 1]),
            (24, 1, 1, 1, [1, 1, 1, 1]),
            (40, 6, 11, 2, [1, 1, 1, 1]),
            (8, 5, 4, 1, [1, 1, 1, 1]),
            // Row kernels (aarch64: 3×3, channels in 16s): stride 2 with many interior
            // columns, and no padding at all.
            (16, 9, 12, 2, [1, 1, 1, 1]),
            (64, 6, 7, 1, [0, 0, 0, 0]),
        ] {
            let x: Vec<u8> = (0..h * w * c).map(|i| (i * 113 % 256) as u8).collect();
            let wt: Vec<i8> = (0..c * 9)
                .map(|i| (i as i32 * 53 % 255 - 127) as i8)
                .collect();
            let wz: Vec<i32> = (0..c as i32).map(|j| j % 5 - 2).collect();
            let bias: Vec<i32> = (0..c as i32).map(|j| j * 311 - 4000).collect();
            let scale: Vec<f32> = (0..c).map(|j| 0.001 + j as f32 * 1e-5).collect();
            let geom = DwGeom {
                c,
                kernel: (3, 3),
                stride: (stride, stride),
                pads,
            };
            let p = params(geom, &wt, &wz, &bias, &scale);
            let (oh, ow) = geom.out_size(h, w).unwrap();
            let reference = Depthwise::new(&p, Kernel::Portable).unwrap();
            let mut want = vec![0u8; oh * ow * c];
            reference.run(&x, h, w, &mut want);
            assert!(
                want.iter().any(|&v| v != want[0]) || oh * ow * c < 40,
                "degenerate test data"
            );
            for &kernel in &kernels {
                // A kernel may refuse a shape (AVX2 wants channels in multiples of 16).
                let Ok(d) = Depthwise::new(&p, kernel) else {
                    continue;
                };
                let mut got = vec![0u8; oh * ow * c];
                d.run(&x, h, w, &mut got);
                assert_eq!(got, want, "{} c {c} {h}x{w} stride {stride}", kernel.name());
                *ran.entry(kernel.name()).or_insert(0) += 1;
            }
        }
        for kernel in kernels {
            assert!(
                ran.get(&kernel.name()).copied().unwrap_or(0) >= 2,
                "{} ran too little",
                kernel.name()
            );
        }
    }

    #[test]
    fn inconsistent_layers_are_refused() {
        let geom = DwGeom {
            c: 2,
            kernel: (3, 3),
            stride: (1, 1),
            pads: [1, 1, 1, 1],
        };
        let wt = [0i8; 18];
        let p = params(geom, &wt[..17], &[0, 0], &[0, 0], &[1.0, 1.0]);
        assert!(Depthwise::new(&p, Kernel::Portable).is_err());
        let g = DwGeom {
            pads: [3, 1, 1, 1],
            ..geom
        };
        let p = params(g, &wt, &[0, 0], &[0, 0], &[1.0, 1.0]);
        assert!(Depthwise::new(&p, Kernel::Portable).is_err());
        let g = DwGeom {
            stride: (0, 1),
            ..geom
        };
        let p = params(g, &wt, &[0, 0], &[0, 0], &[1.0, 1.0]);
        assert!(Depthwise::new(&p, Kernel::Portable).is_err());
    }
}
