//! Command-line grammar (clap). Reads like the table of contents of the program: each
//! subcommand, its arguments and their defaults. Must not: do any work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::backbone::Precision;

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
    /// Backbone precision: f32, w8 (default), qdq or qop.
    #[arg(long, global = true, default_value = "w8", value_name = "P")]
    pub precision: Precision,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute and cache the embeddings of an image folder (both splits if it has train/ and val/).
    Embed {
        /// Image folder: <class>/*.jpg, or train/<class>/ and val/<class>/.
        dataset: PathBuf,
        /// Cache file to write.
        #[arg(long)]
        out: PathBuf,
        /// Parallel embedding threads (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Train a head on an image folder (its train/ split) or an embedding cache.
    Train {
        /// Image folder or embedding cache (.tce).
        dataset: PathBuf,
        /// Head file to write.
        #[arg(long)]
        out: PathBuf,
        /// Validation folder or cache for model selection and early stopping.
        #[arg(long, conflicts_with = "val_split")]
        val: Option<PathBuf>,
        /// Fraction of each class held out per cross-validation fold (k = 1/F folds, 2 to 10,
        /// at most the smallest class's size) when --val is not given; 0 skips selection.
        #[arg(long, default_value_t = 0.2)]
        val_split: f32,
        /// Random seed (same seed and data give the same head).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Confidence below which the answer is "unknown".
        #[arg(long, default_value_t = 0.5)]
        threshold: f32,
        /// L2 strengths to choose from (comma-separated; default: the built-in grid).
        #[arg(long, value_delimiter = ',')]
        l2: Vec<f32>,
        /// Parallel embedding threads (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Measure a head on an image folder (its val/ split) or an embedding cache.
    Eval {
        /// Image folder or embedding cache (.tce).
        dataset: PathBuf,
        /// Head file.
        #[arg(long)]
        head: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Parallel embedding threads (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Classify image files.
    Classify {
        /// Images to classify.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Head file.
        #[arg(long)]
        head: PathBuf,
        /// Show the K most probable classes.
        #[arg(long, default_value_t = 1)]
        top_k: usize,
        /// Print JSON lines, one per image.
        #[arg(long)]
        json: bool,
    },
    /// Time preprocessing, backbone and head on this machine (1 thread).
    Bench {
        /// Timed backbone runs.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Untimed warm-up runs.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Also time every node and print a per-operator profile.
        #[arg(long)]
        profile: bool,
    },
    /// Show the model, precision, CPU features and versions.
    Info {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run the appliance: classify the camera stream, learn from button presses, keep what
    /// was taught in the state directory.
    Run {
        /// State directory (samples, heads).
        #[arg(long, default_value = "/var/lib/teachcam")]
        state: PathBuf,
        /// Frame source: rpicam, gst:PIPELINE, cmd:COMMAND, dir:PATH or synthetic[:PHASE_MS].
        #[arg(long, default_value = "synthetic")]
        camera: String,
        /// Frames per second to take from the source (0 = as fast as possible).
        #[arg(long, default_value_t = 10.0)]
        fps: f64,
        /// Buttons: keyboard, script:MS@BUTTON[+HOLD_MS],... or none. Button 0 = undo (hold it),
        /// buttons 1.. capture classes 1.. (hold for a burst).
        #[arg(long, default_value = "none")]
        buttons: String,
        /// Class names, in button order.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "class1,class2,class3,class4"
        )]
        classes: Vec<String>,
        /// Stop after this many seconds (default: run until SIGTERM/SIGINT).
        #[arg(long)]
        duration: Option<f64>,
        /// Write a JSON status file here about once a second (atomically).
        #[arg(long)]
        status: Option<PathBuf>,
        /// Confidence below which the answer is "unknown".
        #[arg(long, default_value_t = 0.5)]
        threshold: f32,
    },
    /// Write a synthetic image-folder dataset (balls, blocks, rings) for demos and tests.
    Synth {
        /// Output folder (gets train/ and val/).
        out: PathBuf,
        /// Training images per class.
        #[arg(long, default_value_t = 12)]
        train: usize,
        /// Validation images per class.
        #[arg(long, default_value_t = 6)]
        val: usize,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}
