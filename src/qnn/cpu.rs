//! Which kernel each int8 layer type runs on this CPU, and why: the one place that decides
//! (tract-linalg's `best()` pattern). Kernels elsewhere only say what they can run on.
//!
//! The decision is a pure function of a [`Cpu`] feature set, so it is tested with faked sets
//! (a Pi 4, a Pi 5, a 32-bit Pi OS, an x86 box with or without VNNI) whatever machine the
//! tests run on. The table was filled in by measurement (docs/model.md, "Kernel choice per CPU"; figures in docs/measurements.md): wall time
//! on x86-64 with features masked, guest instructions under qemu for ARM.
//!
//! Two environment variables change the decision, for tests and benchmarks:
//!
//! - `TEACHCAM_CPU_MASK=vnni,avx2,dotprod,neon` hides features from teachcam's choice (not
//!   from tract's own float kernels), to run the kernels a lesser CPU would get;
//! - `TEACHCAM_KERNELS=pointwise=NAME,depthwise=NAME,stem=NAME` forces a kernel by name (it
//!   must be runnable here; `teachcam info --json` lists the names).
//!
//! Must not: run kernels, or know about tract graphs.

/// Instruction-set family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64.
    X86_64,
    /// 64-bit ARM.
    Aarch64,
    /// 32-bit ARM (armv7).
    Arm,
    /// Anything else: portable kernels only.
    Other,
}

/// The CPU features that decide kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cpu {
    /// Instruction-set family.
    pub arch: Arch,
    /// x86-64: AVX2 and FMA.
    pub avx2: bool,
    /// x86-64: AVX-512 VNNI with AVX-512 VL (`vpdpbusd` on 256-bit registers).
    pub avx512vnni: bool,
    /// x86-64: AVX-VNNI (VEX-encoded `vpdpbusd`).
    pub avxvnni: bool,
    /// ARM: Advanced SIMD (always on aarch64; optional on armv7).
    pub neon: bool,
    /// aarch64: the dot-product extension (`sdot`; Cortex-A55/A75/A76 and later: Pi 5, Orin).
    pub dotprod: bool,
}

impl Cpu {
    /// A CPU of `arch` with no optional feature.
    pub fn bare(arch: Arch) -> Cpu {
        Cpu {
            arch,
            avx2: false,
            avx512vnni: false,
            avxvnni: false,
            neon: arch == Arch::Aarch64,
            dotprod: false,
        }
    }

    /// This machine's features, less those named in `TEACHCAM_CPU_MASK`.
    pub fn detect() -> Cpu {
        let mut cpu = Self::probe();
        if let Ok(mask) = std::env::var("TEACHCAM_CPU_MASK") {
            cpu = cpu.masked(&mask);
        }
        // The alias the first int8 release documented in its code.
        if std::env::var_os("TEACHCAM_NO_VNNI").is_some() {
            cpu = cpu.masked("vnni");
        }
        cpu
    }

    #[allow(unreachable_code)]
    fn probe() -> Cpu {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            return Cpu {
                avx2,
                avx512vnni: avx2
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vl"),
                avxvnni: avx2 && std::arch::is_x86_feature_detected!("avxvnni"),
                ..Cpu::bare(Arch::X86_64)
            };
        }
        #[cfg(target_arch = "aarch64")]
        {
            return Cpu {
                dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
                ..Cpu::bare(Arch::Aarch64)
            };
        }
        #[cfg(target_arch = "arm")]
        {
            return Cpu {
                neon: arm_has_neon(),
                ..Cpu::bare(Arch::Arm)
            };
        }
        Cpu::bare(Arch::Other)
    }

    /// The same CPU without the comma-separated features (`vnni` hides both VNNI kinds;
    /// unknown names are ignored).
    pub fn masked(mut self, list: &str) -> Cpu {
        for f in list.split(',').map(str::trim) {
            match f {
                "vnni" => {
                    self.avx512vnni = false;
                    self.avxvnni = false;
                }
                "avx512vnni" => self.avx512vnni = false,
                "avxvnni" => self.avxvnni = false,
                "avx2" => {
                    self.avx2 = false;
                    self.avx512vnni = false;
                    self.avxvnni = false;
                }
                "dotprod" => self.dotprod = false,
                "neon" => {
                    self.neon = false;
                    self.dotprod = false;
                }
                _ => {}
            }
        }
        self
    }

    /// Feature names, for reports.
    pub fn features(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (on, name) in [
            (self.avx2, "avx2+fma"),
            (self.avx512vnni, "avx512vnni"),
            (self.avxvnni, "avxvnni"),
            (self.neon, "neon"),
            (self.dotprod, "dotprod"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }

    /// Whether the CPU has a VNNI dot product usable on 256-bit registers.
    pub fn vnni(&self) -> bool {
        self.avx512vnni || self.avxvnni
    }
}

/// 32-bit ARM: NEON from the kernel's hardware capabilities.
#[cfg(target_arch = "arm")]
fn arm_has_neon() -> bool {
    const AT_HWCAP: libc::c_ulong = 16;
    const HWCAP_NEON: libc::c_ulong = 1 << 12;
    // SAFETY: getauxval only reads the process's auxiliary vector.
    unsafe { libc::getauxval(AT_HWCAP) & HWCAP_NEON != 0 }
}

/// A layer type of the int8 section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// 1×1 convolutions (the matrix products: ~90 % of the multiply-adds).
    Pointwise,
    /// Depthwise 3×3 convolutions.
    Depthwise,
    /// The float stem: 3×3/2 convolution, ReLU6, first depthwise, ReLU6, quantise.
    Stem,
}

impl Layer {
    /// Every layer type.
    pub const ALL: [Layer; 3] = [Layer::Pointwise, Layer::Depthwise, Layer::Stem];

    /// Name used in `TEACHCAM_KERNELS` and reports.
    pub fn key(self) -> &'static str {
        match self {
            Layer::Pointwise => "pointwise",
            Layer::Depthwise => "depthwise",
            Layer::Stem => "stem",
        }
    }
}

/// A kernel implementation, named as reports and `TEACHCAM_KERNELS` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Kernel {
    /// Plain Rust that the compiler vectorises for the target (every layer type).
    #[serde(rename = "portable")]
    Portable,
    /// teachcam's AVX2 kernels (1×1: `vpmaddwd` on widened activations; depthwise: tap pairs
    /// through `vpmaddwd`; stem: FMA).
    #[serde(rename = "avx2")]
    Avx2,
    /// teachcam's 1×1 kernel on `vpdpbusd` (AVX-VNNI or AVX-512 VNNI on 256-bit registers).
    #[serde(rename = "vnni")]
    Vnni,
    /// teachcam's aarch64 NEON kernels (1×1 without dot product: `smull`/`smlal2`/`sadalp`;
    /// depthwise: `smlal` on widened activations; stem: `fmla`).
    #[serde(rename = "neon")]
    Neon,
    /// teachcam's aarch64 1×1 kernel on `sdot` by element (cores with the dot product).
    #[serde(rename = "sdot")]
    Sdot,
    /// A tract-linalg int8 matrix-multiply micro-kernel (1×1 only), by its tract name.
    #[serde(rename = "tract")]
    Tract(&'static str),
    /// The stem left unfused, to tract's own float operators (im2col + matrix product).
    #[serde(rename = "tract-ops")]
    TractOps,
}

impl Kernel {
    /// Name used in reports and `TEACHCAM_KERNELS`.
    pub fn name(self) -> String {
        match self {
            Kernel::Portable => "portable".into(),
            Kernel::Avx2 => "avx2".into(),
            Kernel::Vnni => "vnni".into(),
            Kernel::Neon => "neon".into(),
            Kernel::Sdot => "sdot".into(),
            Kernel::Tract(n) => format!("tract:{n}"),
            Kernel::TractOps => "tract-ops".into(),
        }
    }

    /// Whether a CPU with `cpu`'s features can run this kernel for `layer` (in this build).
    pub fn runs_on(self, layer: Layer, cpu: &Cpu) -> bool {
        let x86 = cpu.arch == Arch::X86_64 && cfg!(target_arch = "x86_64");
        let a64 = cpu.arch == Arch::Aarch64 && cfg!(target_arch = "aarch64");
        let a32 = cpu.arch == Arch::Arm && cfg!(target_arch = "arm") && cpu.neon;
        match (self, layer) {
            (Kernel::Portable, _) => true,
            (Kernel::TractOps, Layer::Stem) => true,
            (Kernel::Avx2, _) => x86 && cpu.avx2,
            (Kernel::Vnni, Layer::Pointwise) => x86 && cpu.vnni(),
            (Kernel::Neon, Layer::Depthwise) => a64 || a32,
            (Kernel::Neon, _) => a64,
            (Kernel::Sdot, Layer::Pointwise) => a64 && cpu.dotprod,
            (Kernel::Tract(name), Layer::Pointwise) => TRACT_KERNELS
                .iter()
                .any(|t| t.name == name && t.runs_on(cpu)),
            _ => false,
        }
    }
}

/// tract-linalg's int8 micro-kernels teachcam can drive, and what each needs.
#[derive(Debug, Clone, Copy)]
pub struct TractKernelInfo {
    /// tract's kernel name.
    pub name: &'static str,
    arch: Arch,
    needs: &'static [Need],
}

/// A CPU feature a tract kernel needs besides its architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Avx2,
    Avx512Vnni,
    DotProd,
    Neon,
}

impl Need {
    fn on(self, cpu: &Cpu) -> bool {
        match self {
            Need::Avx2 => cpu.avx2,
            Need::Avx512Vnni => cpu.avx512vnni,
            Need::DotProd => cpu.dotprod,
            Need::Neon => cpu.neon,
        }
    }
}

impl TractKernelInfo {
    fn runs_on(&self, cpu: &Cpu) -> bool {
        let built = match self.arch {
            Arch::X86_64 => cfg!(target_arch = "x86_64"),
            Arch::Aarch64 => cfg!(target_arch = "aarch64"),
            Arch::Arm => cfg!(target_arch = "arm"),
            Arch::Other => false,
        };
        built && cpu.arch == self.arch && self.needs.iter().all(|n| n.on(cpu))
    }
}

const fn tk(name: &'static str, arch: Arch, needs: &'static [Need]) -> TractKernelInfo {
    TractKernelInfo { name, arch, needs }
}

/// The tract-linalg 0.23.9 int8 kernels (i8×i8 → i32) for the targets teachcam ships.
pub const TRACT_KERNELS: [TractKernelInfo; 6] = {
    use Need::*;
    [
        tk("avx2_mmm_i32_8x8", Arch::X86_64, &[Avx2]),
        tk("avx512vnni_mmm_i32_8x8", Arch::X86_64, &[Avx2, Avx512Vnni]),
        tk(
            "avx512vnni_mmm_i32_16x16",
            Arch::X86_64,
            &[Avx2, Avx512Vnni],
        ),
        tk("arm64simd_mmm_i32_8x8", Arch::Aarch64, &[Neon]),
        tk("arm64simd_mmm_i32_8x8_dot", Arch::Aarch64, &[DotProd, Neon]),
        tk("armv7neon_mmm_i32_8x4", Arch::Arm, &[Neon]),
    ]
};

/// A kernel choice with the reason for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Choice {
    /// The kernel.
    pub kernel: Kernel,
    /// Why it was chosen (a measurement, a missing feature, or a forced name).
    pub why: String,
}

/// The kernel `layer` gets on `cpu` by default: the measured table (docs/model.md, "Kernel choice per CPU"; figures in docs/measurements.md).
pub fn default_kernel(layer: Layer, cpu: &Cpu) -> Choice {
    let c = |kernel: Kernel, why: &str| Choice {
        kernel,
        why: why.to_string(),
    };
    match (layer, cpu.arch) {
        (Layer::Pointwise, Arch::X86_64) if cpu.vnni() => c(
            Kernel::Vnni,
            "VNNI: teachcam's 6x16 vpdpbusd kernel measured faster than tract's VNNI kernels",
        ),
        (Layer::Pointwise, Arch::X86_64) if cpu.avx2 => c(
            Kernel::Avx2,
            "AVX2 without VNNI: teachcam's vpmaddwd kernel measured faster than tract's avx2_mmm_i32_8x8",
        ),
        (Layer::Depthwise, Arch::X86_64) if cpu.avx2 => c(
            Kernel::Avx2,
            "AVX2: teachcam's vpmaddwd depthwise kernel measured faster than the portable one",
        ),
        (Layer::Stem, Arch::X86_64) if cpu.avx2 => c(
            Kernel::Avx2,
            "AVX2+FMA: the fused direct stem measured faster than tract's im2col + matrix product",
        ),
        (Layer::Pointwise, Arch::Aarch64) if cpu.dotprod => c(
            Kernel::Sdot,
            "dot product: teachcam's 4x16 sdot kernel (no activation packing) executed fewer instructions than tract-linalg's arm64simd_mmm_i32_8x8_dot (qemu proxy)",
        ),
        (Layer::Pointwise, Arch::Aarch64) => c(
            Kernel::Neon,
            "no dot product: teachcam's smull/smlal2/sadalp kernel executed fewer instructions than tract-linalg's arm64simd_mmm_i32_8x8 (qemu proxy)",
        ),
        (Layer::Pointwise, Arch::Arm) if cpu.neon => c(
            Kernel::Tract("armv7neon_mmm_i32_8x4"),
            "armv7 NEON: tract-linalg's kernel",
        ),
        (Layer::Depthwise, Arch::Arm) if cpu.neon => c(Kernel::Neon, "armv7 NEON (assembly)"),
        (Layer::Stem, Arch::Arm | Arch::Aarch64) => c(
            Kernel::TractOps,
            "ARM: tract's float operators executed fewer instructions than the fused stem (qemu proxy)",
        ),
        (Layer::Depthwise, Arch::Aarch64) => c(Kernel::Neon, "aarch64 NEON"),
        _ => c(Kernel::Portable, "no SIMD kernel for this CPU"),
    }
}

/// The kernel of every layer type for one model load.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelPlan {
    /// The CPU the plan is for.
    pub cpu: Cpu,
    /// 1×1 convolutions.
    pub pointwise: Choice,
    /// Depthwise convolutions.
    pub depthwise: Choice,
    /// The float stem.
    pub stem: Choice,
}

impl KernelPlan {
    /// The defaults for `cpu` ([`default_kernel`]).
    pub fn for_cpu(cpu: Cpu) -> KernelPlan {
        KernelPlan {
            cpu,
            pointwise: default_kernel(Layer::Pointwise, &cpu),
            depthwise: default_kernel(Layer::Depthwise, &cpu),
            stem: default_kernel(Layer::Stem, &cpu),
        }
    }

    /// This machine's plan: [`Cpu::detect`], then `TEACHCAM_KERNELS` where set.
    pub fn detect() -> Result<KernelPlan, String> {
        let cpu = Cpu::detect();
        let spec = std::env::var("TEACHCAM_KERNELS").unwrap_or_default();
        let mut plan = KernelPlan::for_cpu(cpu);
        for layer in Layer::ALL {
            if let Some(c) = forced(&spec, layer, &cpu)? {
                *plan.get_mut(layer) = c;
            }
        }
        Ok(plan)
    }

    /// The same plan with `layer` on `kernel` (for tests and benchmarks).
    pub fn with(mut self, layer: Layer, kernel: Kernel) -> KernelPlan {
        *self.get_mut(layer) = Choice {
            kernel,
            why: "chosen by the caller".into(),
        };
        self
    }

    /// The choice for `layer`.
    pub fn get(&self, layer: Layer) -> &Choice {
        match layer {
            Layer::Pointwise => &self.pointwise,
            Layer::Depthwise => &self.depthwise,
            Layer::Stem => &self.stem,
        }
    }

    fn get_mut(&mut self, layer: Layer) -> &mut Choice {
        match layer {
            Layer::Pointwise => &mut self.pointwise,
            Layer::Depthwise => &mut self.depthwise,
            Layer::Stem => &mut self.stem,
        }
    }
}

/// The kernel `TEACHCAM_KERNELS`-style `spec` forces for `layer`, checked runnable.
fn forced(spec: &str, layer: Layer, cpu: &Cpu) -> Result<Option<Choice>, String> {
    {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((l, name)) = part.split_once('=') else {
                return Err(format!(
                    "TEACHCAM_KERNELS: {part:?} is not LAYER=KERNEL (layers: pointwise, depthwise, stem)"
                ));
            };
            if l.trim() != layer.key() {
                continue;
            }
            let kernel = parse_kernel(name.trim())?;
            if !kernel.runs_on(layer, cpu) {
                return Err(format!(
                    "TEACHCAM_KERNELS: kernel {} cannot run {} layers on this CPU ({})",
                    kernel.name(),
                    layer.key(),
                    cpu.features().join(" ")
                ));
            }
            return Ok(Some(Choice {
                kernel,
                why: "forced by TEACHCAM_KERNELS".into(),
            }));
        }
    }
    Ok(None)
}

/// Parse a kernel name as [`Kernel::name`] prints it.
pub fn parse_kernel(name: &str) -> Result<Kernel, String> {
    Ok(match name {
        "portable" => Kernel::Portable,
        "avx2" => Kernel::Avx2,
        "vnni" => Kernel::Vnni,
        "neon" => Kernel::Neon,
        "sdot" => Kernel::Sdot,
        "tract-ops" => Kernel::TractOps,
        other => match other.strip_prefix("tract:") {
            Some(t) => Kernel::Tract(
                TRACT_KERNELS
                    .iter()
                    .find(|k| k.name == t)
                    .map(|k| k.name)
                    .ok_or_else(|| format!("unknown tract kernel {t:?}"))?,
            ),
            None => return Err(format!("unknown kernel {other:?}")),
        },
    })
}

/// Every kernel that can run `layer` on `cpu`, the default first.
pub fn runnable_kernels(layer: Layer, cpu: &Cpu) -> Vec<Kernel> {
    let mut all = vec![
        Kernel::Portable,
        Kernel::Avx2,
        Kernel::Vnni,
        Kernel::Neon,
        Kernel::Sdot,
        Kernel::TractOps,
    ];
    all.extend(TRACT_KERNELS.iter().map(|t| Kernel::Tract(t.name)));
    let first = default_kernel(layer, cpu).kernel;
    let mut v: Vec<Kernel> = all
        .into_iter()
        .filter(|k| *k != first && k.runs_on(layer, cpu))
        .collect();
    v.insert(0, first);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(avx2: bool, vnni: bool) -> Cpu {
        Cpu {
            avx2,
            avx512vnni: vnni,
            ..Cpu::bare(Arch::X86_64)
        }
    }

    #[test]
    fn the_choice_follows_the_features_not_the_machine() {
        let pw = |cpu: &Cpu| default_kernel(Layer::Pointwise, cpu).kernel;
        assert_eq!(pw(&x86(true, true)), Kernel::Vnni);
        assert_eq!(pw(&x86(true, false)), Kernel::Avx2);
        assert_eq!(pw(&x86(false, false)), Kernel::Portable);
        let pi4 = Cpu::bare(Arch::Aarch64);
        let pi5 = Cpu {
            dotprod: true,
            ..pi4
        };
        assert_eq!(pw(&pi5), Kernel::Sdot);
        assert_eq!(pw(&pi4), Kernel::Neon, "a Pi 4 has no sdot");
        for cpu in [pi4, pi5] {
            assert_eq!(default_kernel(Layer::Stem, &cpu).kernel, Kernel::TractOps);
            assert_eq!(default_kernel(Layer::Depthwise, &cpu).kernel, Kernel::Neon);
        }
        let pi_os32 = Cpu {
            neon: true,
            ..Cpu::bare(Arch::Arm)
        };
        assert_ne!(pw(&pi_os32), Kernel::Portable);
        assert_eq!(
            default_kernel(Layer::Depthwise, &Cpu::bare(Arch::Other)).kernel,
            Kernel::Portable
        );
    }

    #[test]
    fn masks_remove_features_and_what_depends_on_them() {
        let c = x86(true, true);
        assert!(!c.masked("vnni").vnni());
        assert!(c.masked("vnni").avx2);
        let c = c.masked("avx2");
        assert!(!c.avx2 && !c.vnni());
        let a = Cpu {
            dotprod: true,
            ..Cpu::bare(Arch::Aarch64)
        };
        assert!(!a.masked("dotprod").dotprod && a.masked("dotprod").neon);
    }

    #[test]
    fn every_default_can_run_where_it_is_chosen() {
        for cpu in [
            x86(true, true),
            x86(true, false),
            x86(false, false),
            Cpu::bare(Arch::Other),
        ] {
            for layer in Layer::ALL {
                let k = default_kernel(layer, &cpu).kernel;
                // Runnable by features (this build's architecture aside).
                let as_if_native = match k {
                    Kernel::Portable | Kernel::TractOps => true,
                    Kernel::Avx2 => cpu.avx2,
                    Kernel::Vnni => cpu.vnni(),
                    _ => false,
                };
                assert!(as_if_native, "{k:?} for {layer:?} on {cpu:?}");
            }
        }
    }

    #[test]
    fn forcing_a_kernel_names_the_layer_and_checks_it_can_run() {
        let cpu = x86(true, false);
        let f = forced("depthwise=avx2, pointwise=portable", Layer::Pointwise, &cpu).unwrap();
        assert_eq!(f.unwrap().kernel, Kernel::Portable);
        // A faked x86 CPU's SIMD kernels exist only in an x86-64 build.
        let avx2 = forced("pointwise=avx2", Layer::Pointwise, &cpu);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(avx2.unwrap().unwrap().kernel, Kernel::Avx2);
        } else {
            assert!(avx2.is_err());
        }
        assert_eq!(
            forced("depthwise=portable", Layer::Pointwise, &cpu),
            Ok(None)
        );
        assert!(forced("pointwise=vnni", Layer::Pointwise, &cpu).is_err());
        assert!(forced("pointwise", Layer::Pointwise, &cpu).is_err());
        let plan = KernelPlan::for_cpu(cpu).with(Layer::Stem, Kernel::Portable);
        assert_eq!(plan.get(Layer::Stem).kernel, Kernel::Portable);
        assert_eq!(plan.get(Layer::Pointwise).kernel, Kernel::Avx2);
    }

    #[test]
    fn kernel_names_round_trip() {
        for k in [
            Kernel::Portable,
            Kernel::Avx2,
            Kernel::Vnni,
            Kernel::Neon,
            Kernel::Sdot,
            Kernel::TractOps,
            Kernel::Tract("arm64simd_mmm_i32_8x8"),
        ] {
            assert_eq!(parse_kernel(&k.name()).unwrap(), k);
        }
        assert!(parse_kernel("tract:nope").is_err());
        assert!(parse_kernel("fast").is_err());
    }
}
