//! The feature extractor: a MobileNetV2 ONNX model run by tract.
//!
//! Owns finding the model file, checking it against `SHA256SUMS`, loading and optimising it
//! once for a fixed input shape, and turning RGB frames into L2-comparable 1280-d embeddings.
//! The optimised plan is immutable and shared (`Arc`); per-call state lives in the caller's
//! [`Embedder`], so several threads can embed at once without locks.
//! Must not: know about heads, labels or cameras.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::fsutil;
use crate::preprocess::Plan;

/// Side of the square model input, in pixels (the resolution the network was trained at).
pub const INPUT_SIZE: usize = 224;

/// Input sides a backbone can be loaded at (`--input-size`): smaller is faster and less
/// accurate (the network is fully convolutional; docs/measurements.md has the trade-off measured).
pub const INPUT_SIZES: [usize; 3] = [160, 192, 224];

/// Which network the backbone is: each ships as its own model files with its own digests, so
/// heads and stored samples made with one are never mixed with the other's embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BackboneKind {
    /// MobileNetV2 1.0 (ImageNet, top blocks tuned on dog breeds): 300 M multiply-adds at 224.
    #[serde(rename = "mobilenetv2")]
    MobileNetV2,
    /// EfficientNet-Lite2 (ImageNet): 575 M multiply-adds at 224, stronger features for few
    /// examples (docs/measurements.md, "Backbones").
    #[serde(rename = "efficientnet-lite2")]
    EfficientNetLite2,
}

impl BackboneKind {
    /// Every shipped backbone, in the order tables print them.
    pub const ALL: [BackboneKind; 2] = [BackboneKind::MobileNetV2, BackboneKind::EfficientNetLite2];

    /// The default backbone for a CPU with `cpu`'s features, and why: EfficientNet-Lite2 where
    /// its cost is a frame rate a teaching appliance keeps (x86-64, aarch64), MobileNetV2 where
    /// it is not (armv7 and CPUs without SIMD int8 kernels). docs/measurements.md, "Backbones",
    /// has the measurements behind both.
    pub fn for_cpu(cpu: &crate::qnn::cpu::Cpu) -> (BackboneKind, &'static str) {
        use crate::qnn::cpu::Arch;
        match cpu.arch {
            Arch::X86_64 | Arch::Aarch64 => (
                BackboneKind::EfficientNetLite2,
                "EfficientNet-Lite2 taught more from 1 to 10 presses on every real photo set (+0.04 to +0.09 on 37 pet breeds) for 1.6-1.9x MobileNetV2's time (x86 latency; qemu instruction proxy on ARM)",
            ),
            _ => (
                BackboneKind::MobileNetV2,
                "MobileNetV2: half of EfficientNet-Lite2's work, where a frame already takes a third of a second or more (armv7, CPUs without SIMD int8 kernels)",
            ),
        }
    }

    /// Name on the command line, in files and in messages.
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::MobileNetV2 => "mobilenetv2",
            BackboneKind::EfficientNetLite2 => "efficientnet-lite2",
        }
    }

    /// The model files' common prefix in the models directory.
    fn file_prefix(self) -> &'static str {
        match self {
            BackboneKind::MobileNetV2 => "mobilenetv2",
            BackboneKind::EfficientNetLite2 => "efficientnet_lite2",
        }
    }

    /// Whether a file for `precision` ships with this backbone (EfficientNet-Lite2 has no
    /// `qdq` file: it is a measurement variant, and `int8` runs the `qop` file).
    pub fn ships(self, precision: Precision) -> bool {
        !(self == BackboneKind::EfficientNetLite2 && precision == Precision::Qdq)
    }

    /// File name of `precision`'s variant of this backbone inside the models directory.
    pub fn file_name(self, precision: Precision) -> String {
        format!("{}_{}.onnx", self.file_prefix(), precision.file_suffix())
    }
}

impl Default for BackboneKind {
    /// The default for this machine's CPU ([`BackboneKind::for_cpu`]).
    fn default() -> Self {
        BackboneKind::for_cpu(&crate::qnn::cpu::Cpu::detect()).0
    }
}

impl fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackboneKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BackboneKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown backbone {s:?}; choose one of mobilenetv2, efficientnet-lite2")
            })
    }
}

/// Which backbone to load: network, precision and input side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The network.
    pub kind: BackboneKind,
    /// Its precision.
    pub precision: Precision,
    /// Input side in pixels (one of [`INPUT_SIZES`]).
    pub input_size: usize,
    /// Threads one frame's int8 layers are split over (1..=[`MAX_THREADS`]).
    pub threads: usize,
}

/// Most threads one frame may be split over.
pub const MAX_THREADS: usize = 64;

/// The default thread count for a machine with `cores` cores: all but one, which is left to
/// the camera, JPEG decoding, the web console and training.
pub fn default_threads(cores: usize) -> usize {
    cores.saturating_sub(1).clamp(1, MAX_THREADS)
}

/// [`default_threads`] for the cores this process may use.
pub fn default_threads_here() -> usize {
    default_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl Spec {
    /// `kind` at `precision`, the native input size, one thread.
    pub fn new(kind: BackboneKind, precision: Precision) -> Self {
        Spec {
            kind,
            precision,
            input_size: INPUT_SIZE,
            threads: 1,
        }
    }

    /// The same at another input side.
    pub fn sized(self, input_size: usize) -> Self {
        Spec { input_size, ..self }
    }

    /// The same on `threads` threads (clamped to 1..=[`MAX_THREADS`]).
    pub fn threaded(self, threads: usize) -> Self {
        Spec {
            threads: threads.clamp(1, MAX_THREADS),
            ..self
        }
    }
}

/// Which of the shipped model variants to run. The default is chosen for the CPU this runs on
/// ([`Precision::for_cpu`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float weights, float compute.
    F32,
    /// Int8 per-channel weights dequantised at load, float compute (4× smaller than float,
    /// same speed in tract, faithful).
    W8,
    /// Static int8, QDQ format (fake-quantised activations).
    Qdq,
    /// Static int8, QOperator format (`QLinearConv`), run by tract's own operators.
    Qop,
    /// The QOperator file run through teachcam's int8 operators ([`crate::qnn`]): integer
    /// arithmetic identical to onnxruntime's on the same file. The default wherever teachcam
    /// has SIMD int8 kernels for the CPU (see [`Precision::for_cpu`]).
    Int8,
}

impl Default for Precision {
    /// The fastest faithful precision on this machine's CPU.
    fn default() -> Self {
        Precision::for_cpu(&crate::qnn::cpu::Cpu::detect()).0
    }
}

impl Precision {
    /// Every variant, in the order benchmarks print them.
    pub const ALL: [Precision; 5] = [
        Precision::F32,
        Precision::W8,
        Precision::Qdq,
        Precision::Qop,
        Precision::Int8,
    ];

    /// The default precision for a CPU with `cpu`'s features, and why: `int8` where its kernels
    /// measured faster than tract's float path (x86-64 with AVX2, aarch64 with the dot
    /// product, armv7 with NEON: docs/model.md, "Kernel choice per CPU"), else `f32` (aarch64 without
    /// the dot product, where int8 measured no faster, and CPUs where int8 would run portable
    /// loops).
    pub fn for_cpu(cpu: &crate::qnn::cpu::Cpu) -> (Precision, &'static str) {
        use crate::qnn::cpu::Arch;
        match cpu.arch {
            Arch::X86_64 if cpu.avx2 => (
                Precision::Int8,
                "x86-64 with AVX2: teachcam's int8 kernels (VNNI or vpmaddwd) beat tract's float path",
            ),
            Arch::Aarch64 if cpu.dotprod => (
                Precision::Int8,
                "aarch64 with the dot product: teachcam's sdot 1x1 and NEON depthwise kernels executed 0.45x the instructions of tract's float path (qemu proxy, Cortex-A76)",
            ),
            Arch::Aarch64 => (
                Precision::Int8,
                "aarch64 without the dot product (Cortex-A72/A57): teachcam's smull 1x1 and NEON depthwise kernels executed 0.75x the instructions of tract's float path (qemu proxy, Cortex-A72)",
            ),
            Arch::Arm if cpu.neon => (
                Precision::Int8,
                "armv7 with NEON: tract-linalg's int8 kernel and teachcam's NEON kernels beat tract's float path",
            ),
            _ => (
                Precision::F32,
                "no SIMD int8 kernels for this CPU: tract's float kernels are faster than portable int8 loops",
            ),
        }
    }

    /// The model file's suffix for this variant (`int8` runs the `qop` file).
    fn file_suffix(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::W8 => "w8",
            Precision::Qdq => "qdq",
            Precision::Qop | Precision::Int8 => "qop",
        }
    }

    /// Short name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::W8 => "w8",
            Precision::Qdq => "qdq",
            Precision::Qop => "qop",
            Precision::Int8 => "int8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown precision {s:?}; choose one of f32, w8, qdq, qop, int8")
            })
    }
}

/// Why the model could not be used. Every variant names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No models directory could be found.
    #[error(
        "no models directory found (looked in: {looked}); pass --models DIR or set TEACHCAM_MODELS"
    )]
    NoModelsDir {
        /// Places searched.
        looked: String,
    },
    /// The model file does not exist.
    #[error("model file {path} not found; run `make models` to rebuild it or pass --models DIR")]
    Missing {
        /// Expected path.
        path: PathBuf,
    },
    /// The checksum file is missing or does not list the model.
    #[error(
        "{sums} does not list {name}; add its checksum (sha256sum {name} >> SHA256SUMS) or restore the shipped models"
    )]
    NotListed {
        /// The SHA256SUMS file.
        sums: PathBuf,
        /// Model file name.
        name: String,
    },
    /// The model file's checksum does not match.
    #[error(
        "model file {path} is damaged or was replaced (sha256 {actual}, expected {expected}); restore it with `git checkout models/` or `make models`"
    )]
    Checksum {
        /// Model path.
        path: PathBuf,
        /// Digest found.
        actual: String,
        /// Digest expected.
        expected: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A precision this backbone has no file for.
    #[error(
        "backbone {kind} ships no {precision} variant; choose --precision int8, qop, w8 or f32"
    )]
    NotShipped {
        /// The backbone.
        kind: BackboneKind,
        /// The precision asked for.
        precision: Precision,
    },
    /// An input size the backbone is not offered at.
    #[error("input size {size} is not offered; choose one of 160, 192, 224")]
    InputSize {
        /// Size asked for.
        size: usize,
    },
    /// tract could not load or run the model.
    #[error("cannot load model {path}: {message}")]
    Tract {
        /// Model path.
        path: PathBuf,
        /// tract's explanation.
        message: String,
    },
}

/// Find the models directory: explicit, `$TEACHCAM_MODELS`, next to the executable
/// (`models/` or `../share/teachcam/models/`), `./models`, then the source tree.
pub fn find_models_dir(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("TEACHCAM_MODELS") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("models"));
        candidates.push(dir.join("../share/teachcam/models"));
    }
    candidates.push(PathBuf::from("models"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    for c in &candidates {
        if c.join("SHA256SUMS").is_file() {
            return Ok(c.clone());
        }
    }
    Err(ModelError::NoModelsDir {
        looked: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Check `path` against the `SHA256SUMS` in its directory; returns the digest.
pub fn verify_model(path: &Path) -> Result<String, ModelError> {
    if !path.is_file() {
        return Err(ModelError::Missing {
            path: path.to_path_buf(),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let sums = dir.join("SHA256SUMS");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let listing = std::fs::read_to_string(&sums).map_err(|_| ModelError::NotListed {
        sums: sums.clone(),
        name: name.clone(),
    })?;
    let expected = listing
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(_, n)| n.trim().trim_start_matches('*') == name)
        .map(|(h, _)| h.to_ascii_lowercase())
        .ok_or_else(|| ModelError::NotListed {
            sums: sums.clone(),
            name: name.clone(),
        })?;
    let actual = fsutil::sha256_file(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if actual != expected {
        return Err(ModelError::Checksum {
            path: path.to_path_buf(),
            actual,
            expected,
        });
    }
    Ok(actual)
}

/// What made an embedding: the (model digest, precision, input size) triple that heads,
/// stored samples and embedding caches record, so that embeddings of different computations
/// are never mixed.
///
/// `digest` is the identity compared everywhere: the SHA-256 of the model file, re-hashed with
/// a marker when teachcam's int8 operators run it and with the input side when it is not
/// [`INPUT_SIZE`] (so it is *not* the file's SHA-256 in general). Files store it as a string,
/// as they always did; precision and input size are carried along for messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackboneId {
    /// Hex digest of the computation (see the type's docs).
    pub digest: String,
    /// Precision name (`int8`, `w8`, …; `custom` for a model file loaded by path).
    pub precision: String,
    /// Input side in pixels; `None` in files written before it was recorded.
    pub input_size: Option<usize>,
    /// The network; `None` for a model file loaded by path and in files written before it
    /// was recorded (those were all MobileNetV2).
    pub kind: Option<BackboneKind>,
}

impl BackboneId {
    /// Whether embeddings made by `self` and `other` are comparable (same digest).
    pub fn same_as(&self, other: &BackboneId) -> bool {
        self.digest == other.digest
    }

    /// The first 12 hex digits of the digest, for messages.
    pub fn short(&self) -> &str {
        self.digest.get(..12).unwrap_or(&self.digest)
    }
}

impl fmt::Display for BackboneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.short())?;
        if let Some(k) = self.kind {
            write!(f, "{k}, ")?;
        }
        f.write_str(&self.precision)?;
        if let Some(px) = self.input_size {
            write!(f, ", {px} px")?;
        }
        f.write_str(")")
    }
}

/// The last feature map of the network, before its global average pool: `h × w` positions of
/// `c` channels, stored `[h][w][c]` (the pooled embedding is its mean over positions).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    /// Rows (7 at 224).
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Channels (the embedding length).
    pub c: usize,
    /// Values, `[h][w][c]`.
    pub data: Vec<f32>,
}

impl FeatureMap {
    /// The channel vector at one position.
    pub fn at(&self, row: usize, col: usize) -> &[f32] {
        let i = (row * self.w + col) * self.c;
        &self.data[i..i + self.c]
    }
}

/// How the pre-pool tensor comes out of the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MapLayout {
    /// Float `[1, c, h, w]` (tract's own operators).
    Nchw,
    /// `u8` `[1, h, w, c]` with its quantisation (teachcam's int8 operators keep NHWC); the
    /// value is `(q − zero)·scale`, as the final dequantise-and-mean computes it.
    Nhwc {
        /// Scale.
        scale: f32,
        /// Zero point.
        zero: i32,
    },
}

/// Name and layout of the tensor a model's global average pool reads: the graph's
/// `GlobalAveragePool` input, or, for the int8 rewrite, the `u8` tensor its
/// `DequantizeLinear → GlobalAveragePool` pair (fused into one op) reads.
fn pre_pool_tensor(
    proto: &tract_onnx::pb::ModelProto,
    int8: bool,
) -> Result<(String, MapLayout), String> {
    let g = proto.graph.as_ref().ok_or("the model has no graph")?;
    let gap = g
        .node
        .iter()
        .find(|n| n.op_type == "GlobalAveragePool")
        .ok_or("the model has no GlobalAveragePool")?;
    let x = gap.input.first().ok_or("GlobalAveragePool has no input")?;
    if !int8 {
        return Ok((x.clone(), MapLayout::Nchw));
    }
    let dq = g
        .node
        .iter()
        .find(|n| n.output.first() == Some(x) && n.op_type == "DequantizeLinear")
        .ok_or("the int8 model's pool does not read a DequantizeLinear")?;
    if dq.input.len() != 3 {
        return Err("the final DequantizeLinear has no zero point".into());
    }
    let init = |name: &str| {
        g.initializer
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("{name} is not a constant"))
    };
    let scale = scalar_f32(init(&dq.input[1])?)?;
    let zero = scalar_u8(init(&dq.input[2])?)?;
    Ok((
        dq.input[0].clone(),
        MapLayout::Nhwc {
            scale,
            zero: zero as i32,
        },
    ))
}

fn scalar_f32(t: &tract_onnx::pb::TensorProto) -> Result<f32, String> {
    use tract_onnx::pb::tensor_proto::DataType;
    if t.data_type != DataType::Float as i32 {
        return Err(format!("{} is not a float", t.name));
    }
    match (t.raw_data.get(..4), t.float_data.first()) {
        (Some(b), _) => Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        (None, Some(&v)) => Ok(v),
        _ => Err(format!("{} is empty", t.name)),
    }
}

fn scalar_u8(t: &tract_onnx::pb::TensorProto) -> Result<u8, String> {
    use tract_onnx::pb::tensor_proto::DataType;
    if t.data_type != DataType::Uint8 as i32 {
        return Err(format!("{} is not u8", t.name));
    }
    match (t.raw_data.first(), t.int32_data.first()) {
        (Some(&b), _) => Ok(b),
        (None, Some(&v)) => u8::try_from(v).map_err(|_| format!("{} is out of range", t.name)),
        _ => Err(format!("{} is empty", t.name)),
    }
}

/// A loaded, optimised, immutable backbone. Cheap to clone (shared plan).
#[derive(Clone)]
pub struct Backbone {
    plan: Arc<TypedRunnableModel>,
    map: Option<MapLayout>,
    path: PathBuf,
    id: BackboneId,
    precision: Option<Precision>,
    kind: Option<BackboneKind>,
    dim: usize,
    size: usize,
    /// The int8 path's kernel for each layer type (`None` for tract's own operators).
    kernels: Option<crate::qnn::KernelPlan>,
    /// The threads a frame's int8 layers are split over (`None`: the caller's thread only).
    pool: Option<Arc<crate::qnn::pool::Pool>>,
}

impl fmt::Debug for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backbone")
            .field("path", &self.path)
            .field("id", &self.id)
            .field("dim", &self.dim)
            .finish()
    }
}

impl Backbone {
    /// Load the shipped variant `spec` from `models_dir`, verifying its checksum.
    pub fn load(models_dir: &Path, spec: Spec) -> Result<Self, ModelError> {
        Self::load_spec(models_dir, spec, false)
    }

    /// [`Backbone::load`] whose plan also returns the last feature map, for
    /// [`Embedder::embed_with_map`] (class-activation maps: `teachcam explain`). The
    /// embedding is unchanged; the map costs one more output of a tensor the pass computes
    /// anyway.
    pub fn load_with_map(models_dir: &Path, spec: Spec) -> Result<Self, ModelError> {
        Self::load_spec(models_dir, spec, true)
    }

    fn load_spec(models_dir: &Path, spec: Spec, with_map: bool) -> Result<Self, ModelError> {
        if !spec.kind.ships(spec.precision) {
            return Err(ModelError::NotShipped {
                kind: spec.kind,
                precision: spec.precision,
            });
        }
        let path = models_dir.join(spec.kind.file_name(spec.precision));
        let int8 = spec.precision == Precision::Int8;
        let mut b = Self::load_inner(&path, int8, spec.input_size, with_map)?;
        b.set_threads(spec.threads)
            .map_err(|message| ModelError::Tract {
                path: path.clone(),
                message,
            })?;
        b.precision = Some(spec.precision);
        b.kind = Some(spec.kind);
        b.id.precision = spec.precision.name().to_string();
        b.id.kind = Some(spec.kind);
        Ok(b)
    }

    /// Load any model file listed in the `SHA256SUMS` beside it, with tract's own operators.
    pub fn load_file(path: &Path) -> Result<Self, ModelError> {
        Self::load_with(path, false, INPUT_SIZE)
    }

    /// Load a model file for a `size`×`size` input; with `int8`, its quantised section runs on
    /// teachcam's int8 operators (the file must be a QOperator model the rewrite handles).
    pub fn load_with(path: &Path, int8: bool, size: usize) -> Result<Self, ModelError> {
        Self::load_inner(path, int8, size, false)
    }

    fn load_inner(
        path: &Path,
        int8: bool,
        size: usize,
        with_map: bool,
    ) -> Result<Self, ModelError> {
        if !INPUT_SIZES.contains(&size) {
            return Err(ModelError::InputSize { size });
        }
        let file_sha256 = verify_model(path)?;
        let tract_err = |e: TractError| ModelError::Tract {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let onnx = tract_onnx::onnx();
        let mut proto = onnx.proto_model_for_path(path).map_err(tract_err)?;
        if size != INPUT_SIZE
            && let Some(g) = proto.graph.as_mut()
        {
            // Shapes recorded for intermediate tensors are for 224; tract re-infers them.
            g.value_info.clear();
        }
        let map = if with_map {
            Some(
                pre_pool_tensor(&proto, int8).map_err(|message| ModelError::Tract {
                    path: path.to_path_buf(),
                    message: format!("cannot expose the feature map: {message}"),
                })?,
            )
        } else {
            None
        };
        let mut kernels = None;
        let (mut model, mut digest) = if int8 {
            let plan = crate::qnn::KernelPlan::detect().map_err(|message| ModelError::Tract {
                path: path.to_path_buf(),
                message,
            })?;
            let (model, done) = crate::qnn::model_for_proto(proto, &plan).map_err(tract_err)?;
            log::debug!(
                "int8 rewrite of {}: {done:?}, kernels {plan:?}",
                path.display()
            );
            kernels = Some(plan);
            // Another computation than the same file under tract's operators: another identity
            // for heads and stored embeddings.
            let id = crate::fsutil::sha256_hex(format!("{file_sha256}+teachcam-int8").as_bytes());
            (model, id)
        } else {
            (
                onnx.model_for_proto_model(&proto).map_err(tract_err)?,
                file_sha256,
            )
        };
        if let Some((name, _)) = &map {
            // Output 0 stays the embedding; output 1 is the tensor the pool reads.
            let pooled = model.output_outlets().map_err(tract_err)?[0];
            let m = model
                .find_outlet_label(name)
                .ok_or_else(|| ModelError::Tract {
                    path: path.to_path_buf(),
                    message: format!("tensor {name} not found in the loaded graph"),
                })?;
            model
                .select_output_outlets(&[pooled, m])
                .map_err(tract_err)?;
        }
        if size != INPUT_SIZE {
            // Another input size gives other embeddings: another identity.
            digest = crate::fsutil::sha256_hex(format!("{digest}@{size}").as_bytes());
        }
        let plan = model
            .with_input_fact(0, f32::fact([1, 3, size, size]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(tract_err)?;
        let dim = plan
            .model()
            .output_fact(0)
            .ok()
            .and_then(|f| f.shape.as_concrete().map(|s| s.iter().product::<usize>()))
            .ok_or_else(|| ModelError::Tract {
                path: path.to_path_buf(),
                message: "output shape is not fixed".into(),
            })?;
        Ok(Backbone {
            plan,
            map: map.map(|(_, layout)| layout),
            path: path.to_path_buf(),
            id: BackboneId {
                digest,
                precision: "custom".into(),
                input_size: Some(size),
                kind: None,
            },
            precision: None,
            kind: None,
            dim,
            size,
            kernels,
            pool: None,
        })
    }

    /// Split each frame's int8 layers over `threads` threads (a pool made once, here; 1: the
    /// caller's thread only). Results are identical for every count.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), String> {
        self.pool = match threads.clamp(1, MAX_THREADS) {
            1 => None,
            n => Some(Arc::new(crate::qnn::pool::Pool::new(n).map_err(|e| {
                format!("cannot start {n} inference threads: {e}")
            })?)),
        };
        Ok(())
    }

    /// Threads a frame is split over.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.threads())
    }

    /// Run `f` where the int8 layers find this backbone's threads (its pool), or on this
    /// thread alone when it has none.
    fn in_pool<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.pool {
            Some(p) => crate::qnn::par::with_pool(p, f),
            None => f(),
        }
    }

    /// The int8 path's kernels (`None` when the model runs on tract's own operators).
    pub fn kernels(&self) -> Option<&crate::qnn::KernelPlan> {
        self.kernels.as_ref()
    }

    /// Side of the square input this backbone was loaded for.
    pub fn input_size(&self) -> usize {
        self.size
    }

    /// Embedding length (1280 for MobileNetV2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// What this backbone computes, as heads and stored samples record it.
    pub fn id(&self) -> &BackboneId {
        &self.id
    }

    /// Path of the model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shipped variant, when loaded through [`Backbone::load`].
    pub fn precision(&self) -> Option<Precision> {
        self.precision
    }

    /// Shipped network, when loaded through [`Backbone::load`].
    pub fn kind(&self) -> Option<BackboneKind> {
        self.kind
    }

    /// Number of nodes in the optimised graph (for `info`).
    pub fn node_count(&self) -> usize {
        self.plan.model().nodes().len()
    }

    /// A per-thread embedder with its own input buffer and run state.
    pub fn embedder(&self) -> Embedder {
        Embedder {
            backbone: self.clone(),
            input: Arc::new(Tensor::zero::<f32>(&[1, 3, self.size, self.size]).unwrap_or_default()),
            plan: None,
            state: None,
        }
    }

    fn tract_err(&self, e: TractError) -> ModelError {
        ModelError::Tract {
            path: self.path.clone(),
            message: format!("{e:#}"),
        }
    }

    /// Run the network on an already preprocessed NCHW input.
    pub fn run_tensor(&self, input: &[f32]) -> Result<Vec<f32>, ModelError> {
        let t = Tensor::from_shape(&[1, 3, self.size, self.size], input).map_err(|e| {
            ModelError::Tract {
                path: self.path.clone(),
                message: format!("{e:#}"),
            }
        })?;
        let out = self
            .in_pool(|| self.plan.run(tvec!(t.into())))
            .map_err(|e| ModelError::Tract {
                path: self.path.clone(),
                message: format!("{e:#}"),
            })?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::Tract {
                path: self.path.clone(),
                message: format!("{e:#}"),
            })?;
        Ok(view.iter().copied().collect())
    }

    /// True when the plan also returns the feature map ([`Backbone::load_with_map`]).
    pub fn has_map(&self) -> bool {
        self.map.is_some()
    }

    /// Run the network on a preprocessed NCHW input; the embedding and the last feature map.
    /// Fails when the backbone was not loaded with [`Backbone::load_with_map`].
    pub fn run_tensor_with_map(&self, input: &[f32]) -> Result<(Vec<f32>, FeatureMap), ModelError> {
        let err = |message: String| ModelError::Tract {
            path: self.path.clone(),
            message,
        };
        if self.map.is_none() {
            return Err(err(
                "this backbone was loaded without its feature map".into()
            ));
        }
        let t = Tensor::from_shape(&[1, 3, self.size, self.size], input)
            .map_err(|e| err(format!("{e:#}")))?;
        let out = self
            .in_pool(|| self.plan.run(tvec!(t.into())))
            .map_err(|e| err(format!("{e:#}")))?;
        let emb: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| err(format!("{e:#}")))?
            .iter()
            .copied()
            .collect();
        let map = self.feature_map(&out[1])?;
        Ok((emb, map))
    }

    /// The last feature map from the plan's second output, as NHWC floats.
    fn feature_map(&self, t: &Tensor) -> Result<FeatureMap, ModelError> {
        let err = |message: String| ModelError::Tract {
            path: self.path.clone(),
            message,
        };
        let layout = self
            .map
            .ok_or_else(|| err("this backbone was loaded without its feature map".into()))?;
        let shape = t.shape().to_vec();
        if shape.len() != 4 {
            return Err(err(format!("feature map has shape {shape:?}")));
        }
        let map = match layout {
            MapLayout::Nchw => {
                let (c, h, w) = (shape[1], shape[2], shape[3]);
                let v = t
                    .to_plain_array_view::<f32>()
                    .map_err(|e| err(format!("{e:#}")))?;
                let src: Vec<f32> = v.iter().copied().collect();
                let mut data = vec![0f32; c * h * w];
                for ch in 0..c {
                    for p in 0..h * w {
                        data[p * c + ch] = src[ch * h * w + p];
                    }
                }
                FeatureMap { h, w, c, data }
            }
            MapLayout::Nhwc { scale, zero } => {
                let (h, w, c) = (shape[1], shape[2], shape[3]);
                let v = t
                    .to_plain_array_view::<u8>()
                    .map_err(|e| err(format!("{e:#}")))?;
                let data = v
                    .iter()
                    .map(|&q| (q as i32 - zero) as f32 * scale)
                    .collect();
                FeatureMap { h, w, c, data }
            }
        };
        Ok(map)
    }
}

/// Time spent in one kind of operator during a profiled run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpProfile {
    /// tract operator name (after optimisation), e.g. `OptMatMul`, `DepthWise`.
    pub op: String,
    /// Nodes of this kind.
    pub nodes: usize,
    /// Median over runs of the summed time of these nodes, in ms.
    pub ms: f64,
    /// Multiply-adds per run declared by the operators (tract's cost model), in millions.
    pub mmacs: f64,
}

impl Backbone {
    /// Per-operator profile: run the plan `runs` times, timing every node, and group by
    /// operator name. (The same information `tract dump --profile --cost` prints, gathered
    /// through tract's public evaluation hook so no separate tool is needed.)
    pub fn profile(&self, input: &[f32], runs: usize) -> Result<Vec<OpProfile>, ModelError> {
        use std::collections::BTreeMap;
        use std::time::Instant;
        let err = |e: TractError| ModelError::Tract {
            path: self.path.clone(),
            message: format!("{e:#}"),
        };
        let model = self.plan.model();
        let mut per_run: Vec<BTreeMap<String, f64>> = Vec::new();
        for _ in 0..runs.max(1) {
            let t = Tensor::from_shape(&[1, 3, self.size, self.size], input).map_err(err)?;
            let mut state = self.plan.spawn().map_err(err)?;
            let mut times: BTreeMap<String, f64> = BTreeMap::new();
            self.in_pool(|| {
                state.run_plan_with_eval(tvec!(t.into()), |ctx, st, node, inputs| {
                    let start = Instant::now();
                    let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
                    *times.entry(node.op().name().to_string()).or_default() +=
                        start.elapsed().as_secs_f64() * 1e3;
                    r
                })
            })
            .map_err(err)?;
            per_run.push(times);
        }
        let mut out = Vec::new();
        let names: Vec<String> = per_run[0].keys().cloned().collect();
        for name in names {
            let mut v: Vec<f64> = per_run
                .iter()
                .map(|m| m.get(&name).copied().unwrap_or(0.0))
                .collect();
            v.sort_by(f64::total_cmp);
            let mut nodes = 0;
            let mut macs = 0f64;
            for node in model.nodes().iter().filter(|n| n.op().name() == name) {
                nodes += 1;
                if let Ok(facts) = model.node_input_facts(node.id)
                    && let Ok(costs) = node.op.cost(&facts)
                {
                    for (c, n) in costs {
                        if matches!(c, tract_onnx::tract_core::ops::Cost::FMA(_)) {
                            macs += n.to_i64().unwrap_or(0) as f64;
                        }
                    }
                }
            }
            out.push(OpProfile {
                op: name,
                nodes,
                ms: v[v.len() / 2],
                mmacs: macs / 1e6,
            });
        }
        out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(out)
    }
}

/// Reusable per-thread state: the input tensor, a cached preprocessing plan, and tract's run
/// state for the plan (kept between frames instead of being rebuilt on every call).
pub struct Embedder {
    backbone: Backbone,
    /// `[1, 3, size, size]`; shared with tract only during a run, so the next frame is
    /// written in place.
    input: Arc<Tensor>,
    plan: Option<Plan>,
    state: Option<TypedSimpleState>,
}

impl Embedder {
    /// Preprocess a packed RGB8 frame into the internal input buffer.
    pub fn preprocess(&mut self, rgb: &[u8], width: usize, height: usize) {
        if self.plan.as_ref().map(|p| p.source_size()) != Some((width, height)) {
            self.plan = Some(Plan::new(width, height, self.backbone.size));
        }
        if let Some(plan) = &self.plan {
            // Unique after the previous run (tract dropped its reference): no copy.
            let t = Arc::make_mut(&mut self.input);
            if let Ok(mut view) = t.try_as_plain_ram_mut()
                && let Ok(buf) = view.as_slice_mut::<f32>()
            {
                plan.run(rgb, buf);
            }
        }
    }

    /// Run the backbone on what [`Embedder::preprocess`] left in the buffer.
    pub fn run(&mut self) -> Result<Vec<f32>, ModelError> {
        let out = self.run_outputs()?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| self.backbone.tract_err(e))?;
        Ok(view.iter().copied().collect())
    }

    fn run_outputs(&mut self) -> Result<TVec<TValue>, ModelError> {
        if self.state.is_none() {
            self.state = Some(
                self.backbone
                    .plan
                    .spawn()
                    .map_err(|e| self.backbone.tract_err(e))?,
            );
        }
        let state = self.state.as_mut().expect("spawned just above");
        let input = TValue::from_const(Arc::clone(&self.input));
        self.backbone
            .in_pool(|| state.run(tvec!(input)))
            .map_err(|e| self.backbone.tract_err(e))
    }

    /// [`Embedder::run`], also returning the last feature map when the backbone was loaded
    /// with it ([`Backbone::load_with_map`]); `None` otherwise. Same pass, same state.
    pub fn run_with_map(&mut self) -> Result<(Vec<f32>, Option<FeatureMap>), ModelError> {
        let out = self.run_outputs()?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| self.backbone.tract_err(e))?;
        let emb = view.iter().copied().collect();
        let map = match (self.backbone.has_map(), out.get(1)) {
            (true, Some(t)) => Some(self.backbone.feature_map(t)?),
            _ => None,
        };
        Ok((emb, map))
    }

    /// Preprocess and embed one packed RGB8 frame, also returning the last feature map (the
    /// backbone must come from [`Backbone::load_with_map`]). One backbone pass: what a
    /// per-frame class-activation map ([`crate::inspect::explain`]) needs.
    pub fn embed_with_map(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<(Vec<f32>, FeatureMap), ModelError> {
        self.preprocess(rgb, width, height);
        let view = self
            .input
            .to_plain_array_view::<f32>()
            .map_err(|e| self.backbone.tract_err(e))?;
        let x = view.as_slice().ok_or_else(|| ModelError::Tract {
            path: self.backbone.path.clone(),
            message: "input buffer is not contiguous".into(),
        })?;
        self.backbone.run_tensor_with_map(x)
    }

    /// Preprocess and embed one packed RGB8 frame.
    pub fn embed(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.preprocess(rgb, width, height);
        self.run()
    }

    /// The preprocessed input (for tests and diagnostics).
    pub fn input(&self) -> &[f32] {
        self.input
            .try_as_plain_ram()
            .ok()
            .and_then(|v| v.as_slice::<f32>().ok())
            .unwrap_or(&[])
    }

    /// The shared backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_precision_is_chosen_for_the_cpu_it_runs_on() {
        use crate::qnn::cpu::{Arch, Cpu};
        let with = |arch, f: &dyn Fn(&mut Cpu)| {
            let mut c = Cpu::bare(arch);
            f(&mut c);
            Precision::for_cpu(&c).0
        };
        assert_eq!(with(Arch::X86_64, &|c| c.avx2 = true), Precision::Int8);
        assert_eq!(
            with(Arch::X86_64, &|c| {
                c.avx2 = true;
                c.avx512vnni = true
            }),
            Precision::Int8
        );
        assert_eq!(
            with(Arch::X86_64, &|_| {}),
            Precision::F32,
            "x86 without AVX2"
        );
        assert_eq!(
            with(Arch::Aarch64, &|_| {}),
            Precision::Int8,
            "Pi 4 / Jetson Nano: no dot product, int8 still wins"
        );
        assert_eq!(
            with(Arch::Aarch64, &|c| c.dotprod = true),
            Precision::Int8,
            "Pi 5"
        );
        assert_eq!(
            with(Arch::Arm, &|c| c.neon = true),
            Precision::Int8,
            "Pi OS 32-bit"
        );
        assert_eq!(
            with(Arch::Arm, &|_| {}),
            Precision::F32,
            "armv7 without NEON"
        );
        assert_eq!(with(Arch::Other, &|_| {}), Precision::F32);
        // The masked machine gets the masked machine's default.
        let detected = Cpu::detect();
        assert_eq!(Precision::default(), Precision::for_cpu(&detected).0);
    }

    #[test]
    fn the_default_backbone_is_chosen_for_the_cpu_it_runs_on() {
        use crate::qnn::cpu::{Arch, Cpu};
        let kind = |arch| BackboneKind::for_cpu(&Cpu::bare(arch)).0;
        assert_eq!(kind(Arch::X86_64), BackboneKind::EfficientNetLite2);
        assert_eq!(
            kind(Arch::Aarch64),
            BackboneKind::EfficientNetLite2,
            "Pi 4, Pi 5, Jetson"
        );
        assert_eq!(
            kind(Arch::Arm),
            BackboneKind::MobileNetV2,
            "Pi 2/3 on 32-bit Pi OS"
        );
        assert_eq!(kind(Arch::Other), BackboneKind::MobileNetV2);
        assert_eq!(
            BackboneKind::default(),
            BackboneKind::for_cpu(&Cpu::detect()).0
        );
        for k in BackboneKind::ALL {
            assert_eq!(k.name().parse::<BackboneKind>(), Ok(k));
            assert!(k.ships(Precision::Int8) && k.ships(Precision::F32));
        }
        assert!(!BackboneKind::EfficientNetLite2.ships(Precision::Qdq));
        assert!("resnet".parse::<BackboneKind>().is_err());
    }

    #[test]
    fn precision_names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let e = "int4".parse::<Precision>().unwrap_err();
        assert!(e.contains("f32, w8"));
    }

    #[test]
    fn missing_and_unlisted_and_damaged_models_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        let e = verify_model(&p).unwrap_err();
        assert!(matches!(e, ModelError::Missing { .. }) && e.to_string().contains("make models"));
        std::fs::write(&p, b"not a model").unwrap();
        let e = verify_model(&p).unwrap_err();
        assert!(matches!(e, ModelError::NotListed { .. }));
        std::fs::write(
            dir.path().join("SHA256SUMS"),
            format!("{}  m.onnx\n", "0".repeat(64)),
        )
        .unwrap();
        let e = verify_model(&p).unwrap_err();
        assert!(matches!(e, ModelError::Checksum { .. }), "{e}");
        let good = fsutil::sha256_hex(b"not a model");
        std::fs::write(dir.path().join("SHA256SUMS"), format!("{good}  m.onnx\n")).unwrap();
        assert_eq!(verify_model(&p).unwrap(), good);
    }
}
