//! 1×1 convolutions on tract-linalg's int8 matrix-multiply micro-kernels.
//!
//! tract-linalg ships hand-written `i8 × i8 → i32` micro-kernels for every target teachcam
//! builds (SDOT and SMLAL on aarch64, NEON on armv7, AVX2 and AVX-512 VNNI on x86-64). Its
//! generic matrix-product driver would add per-call set-up that the small layers of
//! MobileNetV2 feel, and its epilogues requantise in fixed point, not in onnxruntime's float
//! arithmetic. So this module calls a micro-kernel directly, one `mr × nr` tile at a time,
//! through tract's public kernel descriptor (`DynKernel::kernel`, the tile entry point tract's
//! own driver calls): weights packed once at load in the kernel's layout, each panel of `nr`
//! pixels packed on the fly (converting `u8` activations to `i8` by flipping the top bit), the
//! exact `i32` tile stored, then requantised with [`super::arith::requant_row`].
//!
//! Arithmetic: with `x8 = x - 128`, `Σ (x - x_zero)·w = Σ x8·w + (128 - x_zero)·Σ w`, so the
//! second term joins the bias at load and the integer sums are exactly those of
//! [`super::pointwise`]'s portable kernel (tested on every kernel the CPU can run).
//!
//! Must not: choose kernels ([`super::cpu`] does) or assume a tile size (read from tract).

use std::any::Any;
use std::cell::RefCell;

use tract_linalg::mmm::{DynKernel, FusedKerSpec, MatMatMul, OutputStoreKer};
use tract_linalg::pack::{PackedFormat, PackedI8K4};
use tract_onnx::prelude::DatumType;
use tract_onnx::tract_core::tract_linalg;

use super::arith::requant_row;
use super::buf::AlignedBuf;
use super::layer::{PointwiseParams, PwCommon};

/// How a micro-kernel wants one operand laid out (tract-linalg's two int8 formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `PackedFormat`: per panel of `r` rows, for each `k`, the `r` row values; the panel
    /// holds `k + end_pad` records, rounded up to `align` bytes.
    Plain {
        r: usize,
        align: usize,
        end_pad: usize,
    },
    /// `PackedI8K4`: per panel of `r` rows, for each block of 4 `k`, each row's 4 values;
    /// `k` zero-padded to a multiple of 4.
    K4 { r: usize },
}

impl Layout {
    fn of(f: &dyn tract_linalg::mmm::MMMInputFormat) -> Option<Layout> {
        if let Some(p) = f.downcast_ref::<PackedFormat>() {
            return (p.dt == DatumType::I8).then_some(Layout::Plain {
                r: p.r,
                align: p.alignment_bytes.max(1),
                end_pad: p.end_padding_record,
            });
        }
        f.downcast_ref::<PackedI8K4>()
            .map(|p| Layout::K4 { r: p.r })
    }

    fn r(self) -> usize {
        match self {
            Layout::Plain { r, .. } | Layout::K4 { r } => r,
        }
    }

    /// Bytes of one panel for depth `k`.
    fn panel_bytes(self, k: usize) -> usize {
        match self {
            Layout::Plain { r, align, end_pad } => ((k + end_pad) * r).div_ceil(align) * align,
            Layout::K4 { r } => k.div_ceil(4) * 4 * r,
        }
    }

    /// Pack rows `row(0..r)` (each `k` bytes; `None` = a zero row past the matrix edge) into
    /// one panel, XOR-ing every value with `flip`. `dst` is one panel, zeroed beforehand
    /// where padding must read zero.
    fn pack_panel<'a>(
        self,
        k: usize,
        row: impl Fn(usize) -> Option<&'a [u8]>,
        flip: u8,
        dst: &mut [u8],
    ) {
        match self {
            Layout::Plain { r, .. } => {
                for e in 0..r {
                    match row(e) {
                        Some(src) => {
                            for (kk, &v) in src[..k].iter().enumerate() {
                                dst[kk * r + e] = v ^ flip;
                            }
                        }
                        None => {
                            for kk in 0..k {
                                dst[kk * r + e] = 0;
                            }
                        }
                    }
                }
            }
            Layout::K4 { r } => {
                let blocks = k.div_ceil(4);
                let word = u32::from_ne_bytes([flip; 4]);
                for e in 0..r {
                    let src = row(e);
                    for kb in 0..blocks {
                        let at = kb * r * 4 + e * 4;
                        let d = &mut dst[at..at + 4];
                        match src {
                            Some(s) if kb * 4 + 4 <= k => {
                                let v = u32::from_ne_bytes([
                                    s[kb * 4],
                                    s[kb * 4 + 1],
                                    s[kb * 4 + 2],
                                    s[kb * 4 + 3],
                                ]);
                                d.copy_from_slice(&(v ^ word).to_ne_bytes());
                            }
                            Some(s) => {
                                for (j, dj) in d.iter_mut().enumerate() {
                                    *dj = s.get(kb * 4 + j).map_or(0, |&v| v ^ flip);
                                }
                            }
                            None => d.fill(0),
                        }
                    }
                }
            }
        }
    }
}

type KernelFn = unsafe fn(&[FusedKerSpec<i32>]) -> isize;

/// One of tract-linalg's int8 micro-kernels, resolved to its tile entry point.
#[derive(Clone, Copy)]
pub struct MicroKernel {
    name: &'static str,
    mr: usize,
    nr: usize,
    func: KernelFn,
    a: Layout,
    b: Layout,
    packing: usize,
}

impl std::fmt::Debug for MicroKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}x{})", self.name, self.mr, self.nr)
    }
}

fn resolve<const MR: usize, const NR: usize>(
    k: &dyn Any,
    name: &'static str,
) -> Option<MicroKernel> {
    let k = k.downcast_ref::<DynKernel<MR, NR, i32>>()?;
    let (packing, (a, b)) =
        k.packings.iter().enumerate().find_map(|(i, (a, b))| {
            Some((i, (Layout::of(a.as_ref())?, Layout::of(b.as_ref())?)))
        })?;
    (a.r() == MR && b.r() == NR).then_some(MicroKernel {
        name,
        mr: MR,
        nr: NR,
        func: k.kernel,
        a,
        b,
        packing,
    })
}

impl MicroKernel {
    /// The tract kernel called `name`, if this build has it and this CPU can run it.
    pub fn find(name: &'static str) -> Option<MicroKernel> {
        for routine in tract_linalg::mmm_routines::declared() {
            let mmm: Box<dyn MatMatMul> = (routine.make)();
            if mmm.name() != name || !mmm.built() || !mmm.runnable() {
                continue;
            }
            let any: &dyn Any = &*mmm;
            return resolve::<8, 8>(any, name)
                .or_else(|| resolve::<8, 4>(any, name))
                .or_else(|| resolve::<16, 16>(any, name))
                .or_else(|| resolve::<4, 4>(any, name));
        }
        None
    }

    /// tract's name of the kernel.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A 1×1 convolution whose matrix product runs on a tract micro-kernel.
#[derive(Debug, Clone)]
pub struct TractPointwise {
    kernel: MicroKernel,
    /// Weight panels of `mr` output channels, in the kernel's A layout.
    a: AlignedBuf,
    /// Folded bias (see the module doc), bias and scales padded to whole panels.
    com: PwCommon,
    /// The requantisation epilogue for this CPU.
    requant: RequantRow,
}

/// A function computing [`requant_row`]'s result.
type RequantRow = fn(&[i32], &[i32], &[f32], i32, &mut [u8]);

/// The fastest exact [`requant_row`] for this CPU: armv7's portable loop is scalar, so NEON
/// assembly there; the compiler's vectorisation elsewhere.
fn requant_for_this_cpu() -> RequantRow {
    #[cfg(target_arch = "arm")]
    if super::cpu::Cpu::detect().neon {
        return super::arm32::requant_row;
    }
    requant_row
}

/// Per-thread scratch: one packed activation panel and the `i32` results of one pixel panel.
struct Scratch {
    b: AlignedBuf,
    acc: Vec<i32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { b: AlignedBuf::empty(), acc: Vec::new() })
    };
}

impl TractPointwise {
    /// Pack the layer `l` for `kernel`. `l`'s bias has the activation zero point folded as
    /// for `u8` activations (`bias - x_zero·Σw`); the shift to `i8` activations is added here.
    pub fn new(kernel: MicroKernel, l: &PointwiseParams) -> Self {
        let (n, k, w) = (l.n, l.k, l.w);
        let mr = kernel.mr;
        let panels = n.div_ceil(mr);
        let com = PwCommon::new(l, panels * mr, 128);
        let pa = kernel.a.panel_bytes(k);
        let mut a = AlignedBuf::zeroed(panels * pa + 64);
        let bytes: Vec<u8> = w.iter().map(|&v| v as u8).collect();
        for p in 0..panels {
            let dst = &mut a.as_mut_slice()[p * pa..(p + 1) * pa];
            kernel.a.pack_panel(
                k,
                |e| {
                    let m = p * mr + e;
                    (m < n).then(|| &bytes[m * k..(m + 1) * k])
                },
                0,
                dst,
            );
        }
        TractPointwise {
            kernel,
            a,
            com,
            requant: requant_for_this_cpu(),
        }
    }

    /// The kernel's tract name.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name
    }

    /// `x`: `[pixels][k]` `u8`; `out`: `[pixels][n]`.
    pub fn run(&self, x: &[u8], out: &mut [u8]) {
        let (k, n) = (self.com.k, self.com.n);
        assert!(k > 0 && x.len().is_multiple_of(k), "pointwise input length");
        let pixels = x.len() / k;
        assert_eq!(out.len(), pixels * n, "pointwise output length");
        let (mr, nr) = (self.kernel.mr, self.kernel.nr);
        let mpanels = n.div_ceil(mr);
        let npad = mpanels * mr;
        let pa = self.kernel.a.panel_bytes(k);
        let pb = self.kernel.b.panel_bytes(k);
        assert!(self.a.len() >= mpanels * pa, "packed weights");
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let s = &mut *s;
            s.b.ensure(pb + 64);
            if s.acc.len() < nr * npad {
                s.acc.resize(nr * npad, 0);
            }
            for p0 in (0..pixels).step_by(nr) {
                let rows = (pixels - p0).min(nr);
                self.kernel.b.pack_panel(
                    k,
                    |e| (e < rows).then(|| &x[(p0 + e) * k..(p0 + e + 1) * k]),
                    0x80,
                    &mut s.b.as_mut_slice()[..pb],
                );
                for mp in 0..mpanels {
                    let tile = &mut s.acc[mp * mr..];
                    let spec = [
                        FusedKerSpec::Clear,
                        FusedKerSpec::AddMatMul {
                            k,
                            pa: self.a.as_slice()[mp * pa..].as_ptr(),
                            pb: s.b.as_slice().as_ptr(),
                            packing: self.kernel.packing,
                        },
                        FusedKerSpec::Store(OutputStoreKer {
                            ptr: tile.as_mut_ptr().cast::<u8>(),
                            row_byte_stride: 4,
                            col_byte_stride: (npad * 4) as isize,
                            item_size: 4,
                        }),
                        FusedKerSpec::Done,
                    ];
                    // SAFETY: the kernel was found runnable on this CPU (`MicroKernel::find`).
                    // It reads one A panel (`pa` bytes from `mp * pa`, inside `self.a`, checked
                    // above) and one B panel (`pb` bytes, inside `s.b`), both laid out as its
                    // packing index `packing` says (`Layout::of` read them from the kernel), and
                    // writes an `mr × nr` tile of i32 at `tile[col * npad + row]` for row < mr,
                    // col < nr: at most `(nr - 1) * npad + mp * mr + mr <= nr * npad` from the
                    // start of `acc`, whose length is at least `nr * npad`.
                    let status = unsafe { (self.kernel.func)(&spec) };
                    debug_assert_eq!(status, 0, "{} failed", self.kernel.name);
                }
                for r in 0..rows {
                    (self.requant)(
                        &s.acc[r * npad..r * npad + n],
                        &self.com.bias,
                        &self.com.scale,
                        self.com.y_zero,
                        &mut out[(p0 + r) * n..(p0 + r + 1) * n],
                    );
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    /// Our packer writes exactly what tract's own packer writes, for every format of every
    /// kernel this CPU can run (and the XOR only flips bits).
    #[test]
    fn panels_match_tracts_own_packing() {
        let (k, mn) = (11usize, 13usize);
        let data: Vec<i8> = (0..k * mn)
            .map(|i| (i as i32 * 37 % 255 - 127) as i8)
            .collect();
        let bytes: Vec<u8> = data.iter().map(|&v| v as u8).collect();
        // `[mn][k]`, as weights (`[n][k]`) and activations (`[pixels][k]`) are stored.
        let t = Tensor::from_shape(&[mn, k], &data).unwrap();
        let mut checked = 0;
        for info in super::super::cpu::TRACT_KERNELS {
            let Some(kernel) = MicroKernel::find(info.name) else {
                continue;
            };
            for layout in [kernel.a, kernel.b] {
                let theirs: Box<dyn tract_linalg::mmm::MMMInputValue> = match layout {
                    Layout::Plain { r, align, end_pad } => {
                        PackedFormat::new(DatumType::I8, r, align)
                            .with_end_padding_record(end_pad)
                            .pack_tensor(&t, 1, 0)
                            .unwrap()
                    }
                    Layout::K4 { r } => PackedI8K4::new(r).pack_view(&t.view(), 1, 0).unwrap(),
                };
                let pb = layout.panel_bytes(k);
                for p in 0..mn.div_ceil(layout.r()) {
                    let mut ours = vec![0u8; pb];
                    layout.pack_panel(
                        k,
                        |e| {
                            let m = p * layout.r() + e;
                            (m < mn).then(|| &bytes[m * k..(m + 1) * k])
                        },
                        0,
                        &mut ours,
                    );
                    let ptr = theirs.panel_bytes(p, None).unwrap();
                    // SAFETY: an eager packed input's panel is `pb` readable bytes.
                    let theirs = unsafe { std::slice::from_raw_parts(ptr, pb) };
                    // Padding beyond k records may hold anything in tract's buffer.
                    let live = match layout {
                        Layout::Plain { r, .. } => k * r,
                        Layout::K4 { .. } => pb,
                    };
                    assert_eq!(&ours[..live], &theirs[..live], "{} panel {p}", kernel.name);
                    let mut flipped = vec![0u8; pb];
                    layout.pack_panel(
                        k,
                        |e| {
                            let m = p * layout.r() + e;
                            (m < mn).then(|| &bytes[m * k..(m + 1) * k])
                        },
                        0x80,
                        &mut flipped,
                    );
                    for (i, (a, b)) in ours.iter().zip(&flipped).enumerate().take(live) {
                        let padding = *a == 0 && *b == 0;
                        assert!(padding || a ^ b == 0x80, "byte {i}");
                    }
                }
                checked += 1;
            }
        }
        // Every target teachcam builds has at least one tract int8 kernel.
        if cfg!(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "arm"
        )) {
            assert!(checked > 0, "no tract int8 kernel found");
        }
    }
}
