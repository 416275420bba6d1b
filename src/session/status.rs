//! The session's snapshot for observers ([`Status`]: the status file, the web console, MQTT)
//! and how it is computed from the session's state.
//!
//! Must not: change the session.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Session;
use crate::frame::UNKNOWN;

/// How a head came to be live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// Loaded from the state directory at start.
    Loaded,
    /// Imprinted from the stored samples (usable at once).
    Imprinted,
    /// Fine-tuned in the background.
    FineTuned,
}

/// How a fine-tune ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum FineTuneResult {
    /// Swapped in as this head version.
    Swapped {
        /// Head version.
        version: u64,
    },
    /// Worse than the live head: kept out.
    KeptOut {
        /// Its held-out accuracy.
        accuracy: f32,
        /// The bar it had to reach.
        needed: f32,
    },
    /// Made for samples that changed since: discarded.
    Stale,
    /// Training failed.
    Failed {
        /// Why.
        message: String,
    },
}

/// The camera as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// No frame yet.
    Starting,
    /// Frames arrive.
    Live,
    /// No usable frame for longer than the timeout.
    Lost,
}

/// Error counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Camera errors.
    pub camera: u64,
    /// Unusable frames.
    pub frame: u64,
    /// Backbone errors.
    pub backbone: u64,
    /// Store failures.
    pub store: u64,
    /// Imprint and fine-tune failures.
    pub training: u64,
    /// Captures refused (any reason).
    pub captures_refused: u64,
}

/// One stage's share of the loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageShare {
    /// Mean time per frame, ms.
    pub ms_per_frame: f64,
    /// Share of the four stages' total, 0..1.
    pub share: f64,
}

/// Time per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageReport {
    /// Camera poll, including JPEG decoding.
    pub decode: StageShare,
    /// Frame to model input.
    pub preprocess: StageShare,
    /// The backbone.
    pub backbone: StageShare,
    /// Head and smoothing.
    pub head: StageShare,
}

/// The live head, as observers see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadStatus {
    /// How it was made.
    pub kind: HeadKind,
    /// Its classes (those with samples when it was made).
    pub classes: Vec<String>,
    /// Held-out accuracy, when known.
    pub holdout_accuracy: Option<f32>,
    /// Held-out confusion `[true][predicted]` over `classes`, when known.
    pub confusion: Option<Vec<Vec<usize>>>,
}

/// The last fine-tune.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FineTuneNote {
    /// When it ended, ms since the loop started.
    pub at_ms: u64,
    /// Its generation.
    pub generation: u64,
    /// How it ended.
    #[serde(flatten)]
    pub result: FineTuneResult,
}

/// A snapshot of the session for observers (the status file, a web console, MQTT).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The displayed class, or "unknown".
    pub class: String,
    /// Top probability of the newest frame.
    pub confidence: f32,
    /// Frames per second over the last second.
    pub fps: f64,
    /// Frames through the backbone since start.
    pub frames: u64,
    /// Class names, in button order.
    pub classes: Vec<String>,
    /// Samples per class.
    pub samples_per_class: BTreeMap<String, usize>,
    /// Samples stored in all.
    pub samples: usize,
    /// Heads made live since start.
    pub head_version: u64,
    /// The live head.
    pub head: Option<HeadStatus>,
    /// The last fine-tune.
    pub last_fine_tune: Option<FineTuneNote>,
    /// Error counters.
    pub errors: Errors,
    /// The latest error message.
    pub last_error: Option<String>,
    /// The camera.
    pub camera: CameraState,
    /// Seconds since the loop started.
    pub uptime_s: u64,
    /// Time per stage.
    pub stages: StageReport,
    /// Frames waiting in the inbox of unsure frames (filled in by the shell).
    pub inbox: usize,
}

impl Session {
    /// A snapshot for observers.
    pub fn status(&self, now_ms: u64) -> Status {
        let total: u64 = self.stages.iter().sum();
        let share = |v: u64| StageShare {
            ms_per_frame: v as f64 / 1e3 / self.frames.max(1) as f64,
            share: if total > 0 {
                v as f64 / total as f64
            } else {
                0.0
            },
        };
        Status {
            class: self
                .shown
                .flatten()
                .and_then(|k| self.classes.get(k).cloned())
                .unwrap_or_else(|| UNKNOWN.to_string()),
            confidence: self.confidence,
            fps: self.fps,
            frames: self.frames,
            classes: self.classes.clone(),
            samples_per_class: self
                .classes
                .iter()
                .map(|c| {
                    (
                        c.clone(),
                        self.samples.iter().filter(|s| s.label == *c).count(),
                    )
                })
                .collect(),
            samples: self.samples.len(),
            head_version: self.head_version,
            head: self.live.as_ref().map(|l| HeadStatus {
                kind: l.kind,
                classes: l.head.classes.clone(),
                holdout_accuracy: l.accuracy,
                confusion: l.confusion.clone(),
            }),
            last_fine_tune: self.last_fine_tune.clone(),
            errors: self.errors,
            last_error: self.last_error.clone(),
            camera: self.camera,
            uptime_s: now_ms.saturating_sub(self.started_ms) / 1000,
            stages: StageReport {
                decode: share(self.stages[0]),
                preprocess: share(self.stages[1]),
                backbone: share(self.stages[2]),
                head: share(self.stages[3]),
            },
            inbox: 0,
        }
    }
}
