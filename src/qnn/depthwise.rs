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

use std::ops::Range;

use super::arith::requant;
use super::cpu::Kernel;
use super::layer::DwCommon;
pub use super::layer::{DepthwiseParams, DwGeom};

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
    /// Inside a pool the output rows are split over its threads ([`super::par`]).
    pub fn run(&self, x: &[u8], h: usize, w: usize, out: &mut [u8]) {
        let c = self.geom.c;
        let (oh, ow) = self
            .geom
            .out_size(h, w)
            .expect("depthwise input smaller than its kernel");
        assert_eq!(x.len(), h * w * c, "depthwise input length");
        assert_eq!(out.len(), oh * ow * c, "depthwise output length");
        // At least 2 rows' worth of 16 k multiply-adds a part: less is not worth a thread.
        let min_rows = (16_384 / (ow * c * self.geom.taps()).max(1)).max(1);
        let parts = super::par::ranges(oh, super::par::threads(), 1, min_rows);
        super::par::for_rows(out, ow * c, &parts, |rows, o| {
            self.run_rows(x, h, w, rows, o)
        });
    }

    /// [`Depthwise::run`]'s output rows `rows` only, into `out` (exactly those rows).
    pub fn run_rows(&self, x: &[u8], h: usize, w: usize, rows: Range<usize>, out: &mut [u8]) {
        match &self.imp {
            Imp::Portable(p) => p.run(&self.geom, x, h, w, rows, out),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(p) => p.run(x, h, w, rows, out),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(p) => p.run(x, h, w, rows, out),
            #[cfg(target_arch = "arm")]
            Imp::A32(p) => p.run(x, h, w, rows, out),
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
    fn run(&self, g: &DwGeom, x: &[u8], h: usize, w: usize, rows: Range<usize>, out: &mut [u8]) {
        let c = g.c;
        let (oh, ow) = g.out_size(h, w).unwrap_or((0, 0));
        assert!(rows.end <= oh && out.len() == rows.len() * ow * c);
        let r0 = rows.start;
        let (kh, kw) = g.kernel;
        let xz = self.x_zero as i16;
        let mut acc = vec![0i32; c];
        for oy in rows {
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
                let at = ((oy - r0) * ow + ox) * c;
                let o = &mut out[at..at + c];
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
