//! Command-line grammar (clap). Reads like the table of contents of the program: each
//! subcommand has one args struct with its arguments and their defaults. Values are parsed
//! into checked types ([`crate::config::values`], [`CameraSpec`], [`GpioSpec`]) as clap reads
//! them, so every rule lives with its type, once. Must not: do any work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::backbone::{BackboneKind, Precision, Spec};
use crate::camera::CameraSpec;
use crate::config::values::{Fps, InputSize, L2, Seconds, Threshold, ValSplit};
use crate::gpio::GpioSpec;

/// teachcam: teach a camera to recognise things, offline.
#[derive(Debug, Parser)]
#[command(name = "teachcam", version, about, propagate_version = true)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args)]
pub struct Global {
    /// Directory holding the models and SHA256SUMS (default: $TEACHCAM_MODELS, else the
    /// first of models/ next to the binary, ../share/teachcam/models, ./models).
    #[arg(long, global = true, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Backbone network: mobilenetv2 or efficientnet-lite2 (default: see `info`). Heads and
    /// stored samples record the backbone they were made with.
    #[arg(long, global = true, value_name = "NAME")]
    pub backbone: Option<BackboneKind>,
    /// Backbone precision: int8 (default), w8, f32, qdq or qop.
    #[arg(long, global = true, value_name = "P")]
    pub precision: Option<Precision>,
    /// Threads one frame's int8 layers are split over (default: the cores but one, at least
    /// 1; `[model] threads`). Results are identical for every count.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: Option<u32>,
    /// Side of the square model input: 224 (default), 192 or 160. Smaller is faster and
    /// less accurate; heads and stored samples record the size they were made with.
    #[arg(long, global = true, value_name = "PX")]
    pub input_size: Option<InputSize>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// `run`'s settings; each overrides the config file, which overrides the defaults shown.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML config file (every key is documented in cross/teachcam.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory: samples and heads [default: /var/lib/teachcam].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Frame source: v4l2:/dev/videoN, rpicam, gst:PIPELINE, cmd:COMMAND, dir:PATH or
    /// synthetic[:PHASE_MS] [default: synthetic].
    #[arg(long, value_name = "URI")]
    pub camera: Option<CameraSpec>,
    /// Frames per second to take from the source, 0 = as fast as possible [default: 10].
    #[arg(long)]
    pub fps: Option<Fps>,
    /// Buttons and LEDs: rpi, gpiochip[:CHIP], keyboard, script:MS@BUTTON[+HOLD_MS],... or
    /// none [default: none]. Button 0 = undo (hold it), buttons 1.. capture classes 1..
    /// (hold for a burst).
    #[arg(long, visible_alias = "buttons", value_name = "URI")]
    pub gpio: Option<GpioSpec>,
    /// Class names, in button order [default: class1,class2,class3,class4]. They seed the
    /// state directory's class list at the first start; after that the state's list (edited
    /// at run time) is used.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Write a JSON status file here about once a second (atomically).
    #[arg(long, value_name = "FILE")]
    pub status: Option<PathBuf>,
    /// Confidence below which the answer is "unknown" [default: 0.5].
    #[arg(long)]
    pub threshold: Option<Threshold>,
    /// Serve the web console on ADDRESS:PORT (overrides `[http]`; port 0 picks a free one).
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub http: Option<std::net::SocketAddr>,
    /// Frames one press captures, 1..=20 (overrides `[train] burst`; default 5).
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
}

/// `dataset` subcommands.
#[derive(Debug, Subcommand)]
pub enum DatasetAction {
    /// Write a state directory's samples to a tarball (thumbnails, embeddings, labels, with
    /// checksums), or with --image-folder to <class>/*.jpg folders that `train` accepts.
    Export {
        /// State directory.
        #[arg(long, default_value = crate::config::DEFAULT_STATE)]
        state: PathBuf,
        /// Output: a .tar file, or a folder with --image-folder.
        out: PathBuf,
        /// Write an image folder instead of a tarball.
        #[arg(long)]
        image_folder: bool,
    },
    /// Add samples to a state directory from an exported tarball or an image folder
    /// (<class>/*.jpg; images are embedded with this machine's backbone).
    Import {
        /// State directory.
        #[arg(long, default_value = crate::config::DEFAULT_STATE)]
        state: PathBuf,
        /// A tarball from `dataset export`, or an image folder.
        input: PathBuf,
    },
}

impl Global {
    /// The precision asked for, or the default.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or_default()
    }

    /// The input size asked for, or the default.
    pub fn input_size(&self) -> usize {
        self.input_size.unwrap_or(InputSize::DEFAULT).get()
    }

    /// The backbone asked for, or the default.
    pub fn backbone(&self) -> BackboneKind {
        self.backbone.unwrap_or_default()
    }

    /// The threads asked for, or the default for this machine's cores.
    pub fn threads(&self) -> usize {
        match self.threads {
            Some(n) => n as usize,
            None => crate::backbone::default_threads_here(),
        }
    }

    /// The backbone to load: network, precision, input size and threads as asked for.
    pub fn spec(&self) -> Spec {
        Spec::new(self.backbone(), self.precision())
            .sized(self.input_size())
            .threaded(self.threads())
    }
}

/// `embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Image folder: <class>/*.jpg, or train/<class>/ and val/<class>/.
    pub dataset: PathBuf,
    /// Cache file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Parallel embedding threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Image folder or embedding cache (.tce).
    pub dataset: PathBuf,
    /// Head file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Validation folder or cache for model selection and early stopping.
    #[arg(long, conflicts_with = "val_split")]
    pub val: Option<PathBuf>,
    /// Fraction of each class held out per cross-validation fold (k = 1/F folds, 2 to 10,
    /// at most the smallest class's size) when --val is not given; 0 skips selection.
    #[arg(long, default_value_t = ValSplit::DEFAULT)]
    pub val_split: ValSplit,
    /// Random seed (same seed and data give the same head).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Confidence below which the answer is "unknown".
    #[arg(long, default_value_t = Threshold::DEFAULT)]
    pub threshold: Threshold,
    /// L2 strengths to choose from (comma-separated; default: the built-in grid).
    #[arg(long, value_delimiter = ',')]
    pub l2: Vec<L2>,
    /// Parallel embedding threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Image folder or embedding cache (.tce).
    pub dataset: PathBuf,
    /// Head file.
    #[arg(long)]
    pub head: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Parallel embedding threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// `fewshot`.
#[derive(Debug, Args)]
pub struct FewshotArgs {
    /// Image folder with train/ and val/.
    pub dataset: PathBuf,
    /// Presses per class to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,3,5,10")]
    pub presses: Vec<usize>,
    /// Random draws of which photos are pressed.
    #[arg(long, default_value_t = 5)]
    pub draws: usize,
    /// Frames per press in the burst modes.
    #[arg(long, default_value_t = 5)]
    pub burst: usize,
    /// Training variations per stored sample in the augment modes.
    #[arg(long, default_value_t = 4)]
    pub augment: usize,
    /// Modes to measure (plain, augment, burst, burst+augment; default all).
    #[arg(long, value_delimiter = ',', value_parser = parse_mode)]
    pub modes: Vec<PressMode>,
    /// Presses per taught class in the open-set measurement.
    #[arg(long, default_value_t = 5)]
    pub open_set_presses: usize,
    /// The head's "unknown" threshold (the device's default).
    #[arg(long, default_value_t = Threshold::DEFAULT)]
    pub threshold: Threshold,
    /// Seed of the draws and the variations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Parallel embedding threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// What a press yields in `fewshot` (the command's module doc has the protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PressMode {
    /// One frame per press, nothing added.
    Plain,
    /// One frame per press, training variations added.
    Augment,
    /// A burst of frames per press.
    Burst,
    /// A burst per press, training variations added.
    BurstAugment,
}

impl PressMode {
    /// Every mode, in table order.
    pub const ALL: [PressMode; 4] = [
        PressMode::Plain,
        PressMode::Augment,
        PressMode::Burst,
        PressMode::BurstAugment,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PressMode::Plain => "plain",
            PressMode::Augment => "augment",
            PressMode::Burst => "burst",
            PressMode::BurstAugment => "burst+augment",
        }
    }

    /// Whether a press is a burst of frames.
    pub fn burst(self) -> bool {
        matches!(self, PressMode::Burst | PressMode::BurstAugment)
    }

    /// Whether training adds variations of the stored samples.
    pub fn augment(self) -> bool {
        matches!(self, PressMode::Augment | PressMode::BurstAugment)
    }
}

fn parse_mode(s: &str) -> Result<PressMode, String> {
    PressMode::ALL
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("unknown mode {s:?}; choose plain, augment, burst or burst+augment"))
}

/// `classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Images to classify.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Head file.
    #[arg(long)]
    pub head: PathBuf,
    /// Show the K most probable classes.
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// Print JSON lines, one per image.
    #[arg(long)]
    pub json: bool,
    /// With --json, include each image's embedding (for comparing builds).
    #[arg(long, requires = "json")]
    pub embedding: bool,
}

/// `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed backbone runs.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub runs: u32,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also time every node and print a per-operator profile.
    #[arg(long)]
    pub profile: bool,
    /// Also run this many backbones at once (independent frames, one plan each, shared
    /// weights) and report throughput and latency under that load.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrent: u32,
    /// Also time one frame split over each of these thread counts, alternated in rounds,
    /// and check their embeddings are identical (e.g. 1,2,4).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=64))]
    pub thread_counts: Vec<u32>,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunCmd {
    /// Flags that override the config file.
    #[command(flatten)]
    pub run: RunArgs,
    /// Stop after this many seconds (default: run until SIGTERM/SIGINT).
    #[arg(long)]
    pub duration: Option<Seconds>,
}

/// `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Flags as for `run` (the config file's settings are checked too).
    #[command(flatten)]
    pub run: RunArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (gets train/ and val/).
    pub out: PathBuf,
    /// Training images per class (at most 100 000: a count that large is a typo, and the
    /// images would fill the disk).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub train: u32,
    /// Validation images per class (at most 100 000).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub val: u32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute and cache the embeddings of an image folder (both splits if it has train/ and val/).
    Embed(EmbedArgs),
    /// Train a head on an image folder (its train/ split) or an embedding cache.
    Train(TrainArgs),
    /// Measure a head on an image folder (its val/ split) or an embedding cache.
    Eval(EvalArgs),
    /// Classify image files.
    Classify(ClassifyArgs),
    /// What a few presses teach: accuracy over presses per class, several random draws, with
    /// and without bursts and training variations, and how often an untaught thing is
    /// called "unknown" (a photo set with train/ and val/).
    Fewshot(FewshotArgs),
    /// Time preprocessing, backbone and head on this machine (see --thread-counts and
    /// --concurrent).
    Bench(BenchArgs),
    /// Show the model, precision, CPU features and versions.
    Info(InfoArgs),
    /// Run the appliance: classify the camera stream, learn from button presses, keep what
    /// was taught in the state directory.
    Run(RunCmd),
    /// Check this machine for running the appliance: cameras, GPIO chips and lines, the
    /// model, the state directory and the config; says what is wrong and how to fix it.
    Doctor(DoctorArgs),
    /// Move what a device was taught: export to a tarball or an image folder, import back.
    Dataset {
        /// What to do.
        #[command(subcommand)]
        action: DatasetAction,
    },
    /// Class-activation map: where in the picture the head's score for a class comes from.
    Explain(ExplainArgs),
    /// A grid of the first channels of one layer's output (float model); without --layer,
    /// list the layers.
    Features(FeaturesArgs),
    /// Dream an image the head is sure shows a class: gradient ascent on the pixels through
    /// the float model, smoothed by a total-variation penalty.
    Dream(DreamArgs),
    /// Adversarial example: change a photo by at most EPS levels per pixel until the head
    /// names the target class (iterative sign-gradient on the float model).
    Attack(AttackArgs),
    /// Write a synthetic image-folder dataset (balls, blocks, rings) for demos and tests.
    Synth(SynthArgs),
}

/// `explain` arguments.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Image to explain.
    pub image: PathBuf,
    /// Head file (trained for the --precision backbone).
    #[arg(long)]
    pub head: PathBuf,
    /// Class to explain, by name or index (default: the predicted class).
    #[arg(long)]
    pub class: Option<String>,
    /// Heat map over the picture the model saw (PNG).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the map, logit, bias and probabilities as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `features` arguments.
#[derive(Debug, Clone, Args)]
pub struct FeaturesArgs {
    /// Image to look at.
    pub image: PathBuf,
    /// Layer number (as listed without --layer) or tensor name.
    #[arg(long)]
    pub layer: Option<String>,
    /// Grid image to write (PNG).
    #[arg(long, required_unless_present = "list")]
    pub out: Option<PathBuf>,
    /// How many channels (the first ones).
    #[arg(long, default_value_t = 16)]
    pub channels: usize,
    /// List the layers and exit.
    #[arg(long)]
    pub list: bool,
}

/// `dream` arguments.
#[derive(Debug, Clone, Args)]
pub struct DreamArgs {
    /// Head file (trained on the f32 backbone: `train --precision f32`).
    #[arg(long)]
    pub head: PathBuf,
    /// Class to dream, by name or index.
    #[arg(long)]
    pub class: String,
    /// Image to write (PNG).
    #[arg(long)]
    pub out: PathBuf,
    /// Gradient steps.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Step length in pixel levels for the average pixel.
    #[arg(long, default_value_t = 3.0)]
    pub lr: f32,
    /// Weight of the total-variation penalty (0 = none; higher = smoother).
    #[arg(long, default_value_t = 3000.0)]
    pub tv_weight: f32,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also ask the int8 backbone, with this head trained for it, about the written image.
    #[arg(long, value_name = "INT8_HEAD")]
    pub check_int8: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `attack` arguments.
#[derive(Debug, Clone, Args)]
pub struct AttackArgs {
    /// Photo to change.
    pub image: PathBuf,
    /// Head file (trained on the f32 backbone: `train --precision f32`).
    #[arg(long)]
    pub head: PathBuf,
    /// Class to reach, by name or index.
    #[arg(long)]
    pub target: String,
    /// L∞ budget in pixel levels (1 = 1/255).
    #[arg(long, default_value_t = 4)]
    pub eps: u8,
    /// Most gradient steps.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Changed image to write (PNG: lossless, so the change survives).
    #[arg(long)]
    pub out: PathBuf,
    /// Also ask the int8 backbone, with this head trained for it, about the written image.
    #[arg(long, value_name = "INT8_HEAD")]
    pub check_int8: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}
