//! 1×1 convolutions (stride 1, no padding): a `[pixels × k] · [k × n]` integer product with
//! requantisation, on `u8` NHWC activations and symmetric `i8` weights.
//!
//! [`Pointwise`] packs the weights once, for one kernel, and runs it. The kernels: portable
//! Rust (here), teachcam's x86-64 AVX2 and VNNI kernels ([`super::x86`]), its aarch64 NEON
//! kernels ([`super::neon`]) and tract-linalg's micro-kernels ([`super::tractmm`]). Which one
//! a layer gets is [`super::cpu`]'s decision; every one computes exactly
//! [`super::arith::requant`] of the exact integer sum (tested against the portable kernel and
//! onnxruntime's fixtures).
//!
//! Must not: pick a kernel by itself.

use super::arith::requant_row;
use super::cpu::Kernel;
pub use super::layer::PointwiseParams;
use super::layer::PwCommon;
use super::tractmm::{MicroKernel, TractPointwise};

#[derive(Debug, Clone)]
enum Imp {
    Portable(Portable),
    #[cfg(target_arch = "x86_64")]
    Avx2(super::x86::Avx2Pointwise),
    #[cfg(target_arch = "x86_64")]
    Vnni(super::x86::VnniPointwise),
    #[cfg(target_arch = "aarch64")]
    Neon(super::neon::NeonPointwise),
    #[cfg(target_arch = "aarch64")]
    Sdot(super::sdot::SdotPointwise),
    Tract(TractPointwise),
}

/// A 1×1 convolution with its weights packed for one kernel.
#[derive(Debug, Clone)]
pub struct Pointwise {
    k: usize,
    n: usize,
    kernel: Kernel,
    imp: Imp,
}

impl Pointwise {
    /// Pack `p` for `kernel`; an error when the parameters are inconsistent or the kernel is
    /// not available in this build or on this CPU.
    pub fn new(p: &PointwiseParams, kernel: Kernel) -> Result<Self, String> {
        p.check()?;
        let bias = p.folded_bias();
        let l = &p.with_folded_bias(&bias);
        let unavailable = || format!("kernel {} is not available here", kernel.name());
        let imp = match kernel {
            Kernel::Portable => Imp::Portable(Portable {
                w: p.w.to_vec(),
                com: PwCommon::new(l, p.n, 0),
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => Imp::Avx2(super::x86::Avx2Pointwise::new(l).ok_or_else(unavailable)?),
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => Imp::Vnni(super::x86::VnniPointwise::new(l).ok_or_else(unavailable)?),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => Imp::Neon(super::neon::NeonPointwise::new(l).ok_or_else(unavailable)?),
            #[cfg(target_arch = "aarch64")]
            Kernel::Sdot => Imp::Sdot(super::sdot::SdotPointwise::new(l).ok_or_else(unavailable)?),
            Kernel::Tract(name) => {
                let mk = MicroKernel::find(name).ok_or_else(unavailable)?;
                Imp::Tract(TractPointwise::new(mk, l))
            }
            #[allow(unreachable_patterns)]
            _ => return Err(unavailable()),
        };
        Ok(Pointwise {
            k: p.k,
            n: p.n,
            kernel,
            imp,
        })
    }

    /// Input channels.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The kernel this layer runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `x`: `[pixels][k]`; `out`: `[pixels][n]`. Inside a pool the pixels are split over its
    /// threads ([`super::par`]), in whole tiles of 8.
    pub fn run(&self, x: &[u8], out: &mut [u8]) {
        assert!(x.len().is_multiple_of(self.k), "pointwise input length");
        let pixels = x.len() / self.k;
        assert_eq!(out.len(), pixels * self.n, "pointwise output length");
        // At least 32 k multiply-adds a part: less is not worth a thread.
        let min = (32_768 / (self.k * self.n).max(1)).max(8);
        let parts = super::par::ranges(pixels, super::par::threads(), 8, min);
        super::par::for_rows(out, self.n, &parts, |px, o| {
            self.run_pixels(&x[px.start * self.k..px.end * self.k], o)
        });
    }

    /// [`Pointwise::run`] on one thread.
    fn run_pixels(&self, x: &[u8], out: &mut [u8]) {
        match &self.imp {
            Imp::Portable(p) => p.run(x, out),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(p) => p.run(x, out),
            #[cfg(target_arch = "x86_64")]
            Imp::Vnni(p) => p.run(x, out),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(p) => p.run(x, out),
            #[cfg(target_arch = "aarch64")]
            Imp::Sdot(p) => p.run(x, out),
            Imp::Tract(p) => p.run(x, out),
        }
    }
}

/// Plain Rust: four pixels at a time, one output channel at a time, dot products over `k`
/// that the compiler vectorises (widening multiply-adds on x86 and ARM).
#[derive(Debug, Clone)]
struct Portable {
    /// `[n][k]`.
    w: Vec<i8>,
    com: PwCommon,
}

impl Portable {
    fn run(&self, x: &[u8], out: &mut [u8]) {
        let PwCommon {
            k,
            n,
            ref bias,
            ref scale,
            y_zero,
        } = self.com;
        let pixels = x.len() / k;
        let mut acc = vec![0i32; 4 * n];
        for p0 in (0..pixels).step_by(4) {
            let rows = (pixels - p0).min(4);
            let row = |r: usize| &x[(p0 + r.min(rows - 1)) * k..][..k];
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            for j in 0..n {
                let w = &self.w[j * k..(j + 1) * k];
                let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
                for kk in 0..k {
                    let wv = w[kk] as i32;
                    a0 += r0[kk] as i32 * wv;
                    a1 += r1[kk] as i32 * wv;
                    a2 += r2[kk] as i32 * wv;
                    a3 += r3[kk] as i32 * wv;
                }
                acc[j] = a0;
                acc[n + j] = a1;
                acc[2 * n + j] = a2;
                acc[3 * n + j] = a3;
            }
            for r in 0..rows {
                requant_row(
                    &acc[r * n..(r + 1) * n],
                    bias,
                    scale,
                    y_zero,
                    &mut out[(p0 + r) * n..(p0 + r + 1) * n],
                );
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::qnn::cpu::{Cpu, Layer, runnable_kernels};

    /// Deterministic test layer: `pixels × k` input, `n` outputs, awkward zero points.
    pub(crate) fn layer(
        pixels: usize,
        k: usize,
        n: usize,
    ) -> (Vec<u8>, Vec<i8>, Vec<i32>, Vec<f32>) {
        let x: Vec<u8> = (0..pixels * k).map(|i| (i * 131 % 256) as u8).collect();
        let w: Vec<i8> = (0..n * k)
            .map(|i| (i as i32 * 71 % 255 - 127) as i8)
            .collect();
        let bias: Vec<i32> = (0..n as i32).map(|j| j * 997 - 5000).collect();
        let scale: Vec<f32> = (0..n).map(|j| 0.0007 + j as f32 * 1e-5).collect();
        (x, w, bias, scale)
    }

    /// The naive definition, for the portable kernel to be checked against.
    fn naive(x: &[u8], p: &PointwiseParams) -> Vec<u8> {
        let pixels = x.len() / p.k;
        let mut out = vec![0u8; pixels * p.n];
        for px in 0..pixels {
            for j in 0..p.n {
                let mut acc = p.bias[j];
                for kk in 0..p.k {
                    acc += (x[px * p.k + kk] as i32 - p.x_zero) * p.w[j * p.k + kk] as i32;
                }
                out[px * p.n + j] = crate::qnn::arith::requant(acc, p.scale[j], p.y_zero);
            }
        }
        out
    }

    #[test]
    fn every_kernel_on_this_cpu_equals_the_definition() {
        let cpu = Cpu::detect();
        let kernels = runnable_kernels(Layer::Pointwise, &cpu);
        assert!(kernels.contains(&Kernel::Portable));
        let mut ran = std::collections::HashMap::new();
        // Shapes with partial pixel tiles and partial channel panels, odd and even k, and the
        // zero-point and saturation extremes.
        for &(pixels, k, n, xz, yz) in &[
            (1usize, 4usize, 8usize, 9i32, 120i32),
            (13, 16, 24, 0, 0),
            (7, 40, 36, 255, 255),
            (50, 96, 16, 128, 3),
            (9, 3, 5, 17, 200),
            (33, 24, 144, 60, 128),
            // k with 12 past its last 16 (a zero-padded block, or three blocks of 4).
            (6, 28, 20, 5, 250),
        ] {
            let (x, w, bias, scale) = layer(pixels, k, n);
            let p = PointwiseParams {
                n,
                k,
                w: &w,
                bias: &bias,
                scale: &scale,
                x_zero: xz,
                y_zero: yz,
            };
            let want = naive(&x, &p);
            assert!(want.iter().any(|&v| v != want[0]), "degenerate test data");
            for &kernel in &kernels {
                // A kernel may refuse a shape (VNNI wants k in multiples of 4); the graph
                // then uses the portable one. Every kernel must take some shapes below.
                let Ok(layer) = Pointwise::new(&p, kernel) else {
                    continue;
                };
                let mut got = vec![0u8; pixels * n];
                layer.run(&x, &mut got);
                assert_eq!(got, want, "{} on {pixels}x{k}->{n}", kernel.name());
                *ran.entry(kernel.name()).or_insert(0) += 1;
            }
        }
        for kernel in kernels {
            assert!(
                ran.get(&kernel.name()).copied().unwrap_or(0) >= 3,
                "{} ran too little",
                kernel.name()
            );
        }
    }

    #[test]
    fn inconsistent_layers_and_unavailable_kernels_are_refused() {
        let (_, w, bias, scale) = layer(1, 4, 8);
        let bad = PointwiseParams {
            n: 8,
            k: 5,
            w: &w,
            bias: &bias,
            scale: &scale,
            x_zero: 0,
            y_zero: 0,
        };
        assert!(Pointwise::new(&bad, Kernel::Portable).is_err());
        let ok = PointwiseParams { k: 4, ..bad };
        assert!(Pointwise::new(&ok, Kernel::Tract("no_such_kernel")).is_err());
    }
}
