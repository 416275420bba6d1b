//! The appliance's policy as a pure state machine: [`Session::step`]`(now_ms, input)` returns
//! the [`Effect`]s to carry out, and [`Session::next_deadline`] says when to call it again
//! (smoltcp's `Interface::poll` / `poll_delay` shape).
//!
//! Inputs are a prediction for a frame, a fault, a user [`Action`] from any source (buttons,
//! keyboard, scripts, and the web console and MQTT to come: one type, with an [`Origin`]
//! carrying an optional request id so a requester can match the outcome), the result of an
//! imprint or a fine-tune, and the result of a store request (done, or refused: disk full,
//! read-only). Effects are: show something on the indicator, make a store request, imprint
//! or fine-tune a head, use a head, publish an [`Event`], ping the watchdog.
//!
//! Rules (each has a unit test in `tests.rs`):
//! - Every committed change of samples or classes starts a new *generation*; at the next
//!   tick one imprint is requested for it (a burst of changes in one poll makes one imprint).
//!   The imprinted head is used and saved at once, and a fine-tune of the same generation is
//!   queued.
//! - A fine-tune of an older generation is discarded. One of the current generation is
//!   swapped in only if its held-out accuracy is no worse than the live head's (or, for an
//!   imprinted head, than the imprint's held-out accuracy on the same folds).
//! - A capture needs a fresh frame and an existing class; a refused capture (disk full,
//!   read-only state, no frame) is an event, a counter and an alert on the indicator, never
//!   an exit. A head that could not be saved is retried with backoff.
//! - The camera is *lost* when no usable frame arrived for `camera_timeout_ms` (alert until
//!   it is back). Faults are counted; an event per kind at most every 10 s.
//! - Class edits are validated here (names, duplicates, unknown ids) and go to the store as
//!   one journaled [`Edit`].
//!
//! Must not: read clocks, sleep, do I/O or start threads; it never fails (bad inputs become
//! refusals and events). Invariant: the sample and class mirrors equal what the store has
//! acknowledged.

pub mod buttons;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use heapless::HistoryBuffer;
use serde::Serialize;

use crate::frame::{UNKNOWN, check_class_name};
use crate::gpio::Lamp;
use crate::head::Head;
use crate::store::{Edit, SampleInfo};

/// Largest smoothing window, frames.
pub const MAX_SMOOTHING: usize = 16;
/// Default smoothing window, frames.
pub const SMOOTHING: usize = 5;
/// Most captures one burst action may ask for.
pub const MAX_BURST: u32 = 100;
/// Shortest period between two captures of a burst, ms.
pub const MIN_BURST_MS: u64 = 50;
/// Most classes a session keeps.
pub const MAX_CLASSES: usize = 64;
/// At most one [`Event::Fault`] per kind in this long, ms (the counters count every one).
pub const FAULT_REPORT_MS: u64 = 10_000;
/// First retry delay of a head that could not be saved, ms (doubling up to 60 s).
pub const SAVE_RETRY_MS: u64 = 1000;

/// Correlates an action with the events it causes (chosen by the requester).
pub type RequestId = u64;

/// Where an action came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A GPIO button.
    Button,
    /// A key typed on the terminal.
    Keyboard,
    /// A scripted press (tests, demos).
    Script,
    /// The web console.
    Http,
    /// An MQTT command.
    Mqtt,
    /// The program itself (tests, start-up).
    Internal,
}

/// Who asked, which request it answers, and when it was asked (ms on the session's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// Where it came from.
    pub source: Source,
    /// The requester's id, echoed in every event the action causes.
    pub request: Option<RequestId>,
    /// When the action happened (a press is timed by the button thread).
    pub at_ms: u64,
}

/// A class by button position or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassRef {
    /// Position in the class list (button k+1 is class k).
    Index(usize),
    /// Name.
    Name(String),
}

impl fmt::Display for ClassRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassRef::Index(k) => write!(f, "class #{}", k + 1),
            ClassRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// What a user asks for, from any source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Store the current frame as an example of a class.
    Capture(ClassRef),
    /// `count` captures of a class, one every `every_ms`.
    Burst {
        /// Which class.
        class: ClassRef,
        /// How many captures (1..=[`MAX_BURST`]).
        count: u32,
        /// Period, ms (at least [`MIN_BURST_MS`]).
        every_ms: u64,
    },
    /// Remove the newest sample.
    Undo,
    /// Add a class at the end of the list.
    AddClass(String),
    /// Rename a class (its samples follow; its button stays).
    RenameClass {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Remove a class and delete its samples.
    RemoveClass(String),
    /// Delete these samples.
    DeleteSamples(Vec<u64>),
    /// Give these samples another (existing) class.
    RelabelSamples {
        /// Which samples.
        ids: Vec<u64>,
        /// The class they belong to.
        to: String,
    },
    /// Add these samples, verified and staged beside the loop (the web console's dataset
    /// upload; the shell holds their files): their labels that are not classes yet become
    /// classes at the end of the list.
    Import(Vec<SampleInfo>),
}

/// The head's answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guess {
    /// Index into the live head's classes, `None` below its threshold ("unknown").
    pub class: Option<usize>,
    /// Top probability.
    pub confidence: f32,
}

/// Time spent per stage on one frame, microseconds (measured by the shell).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    /// Getting the frame (camera poll, including JPEG decoding).
    pub decode_us: u64,
    /// Frame to model input.
    pub preprocess_us: u64,
    /// The backbone.
    pub backbone_us: u64,
    /// Head and smoothing.
    pub head_us: u64,
}

/// A frame that went through the backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameReport {
    /// The head's answer, `None` while there is no head.
    pub guess: Option<Guess>,
    /// The frame's tag (file name, scene kind), for the console line.
    pub tag: String,
    /// Stage times.
    pub stages: Stages,
}

/// Something in the loop failed; counted, reported, survived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The camera returned an error.
    Camera(String),
    /// The camera returned a frame that is not usable (torn, wrong size).
    Frame(String),
    /// The backbone failed on a frame.
    Backbone(String),
}

/// A finished fine-tune.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTune {
    /// The new head.
    pub head: Arc<Head>,
    /// Its held-out accuracy (`None`: too few samples to hold any out).
    pub holdout_accuracy: Option<f32>,
    /// Held-out accuracy of the imprint on the same folds.
    pub imprint_accuracy: Option<f32>,
    /// Held-out confusion, `[true][predicted]` over the head's classes.
    pub confusion: Option<Vec<Vec<usize>>>,
}

/// Why the store did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Refusal {
    /// The disk is full: free space; later presses are tried again.
    DiskFull,
    /// The state directory cannot be written.
    ReadOnly,
    /// No recent frame to capture (camera lost or not started).
    NoFrame,
    /// The frame could not be made into a thumbnail.
    BadFrame(String),
    /// Anything else, with the store's message.
    Failed(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DiskFull => f.write_str("the disk is full; free some space"),
            Refusal::ReadOnly => f.write_str("the state directory cannot be written"),
            Refusal::NoFrame => f.write_str("no recent camera frame"),
            Refusal::BadFrame(m) => write!(f, "the frame cannot be stored ({m})"),
            Refusal::Failed(m) => f.write_str(m),
        }
    }
}

/// What a store edit means (for the mirrors and the events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Undo: the newest sample was removed.
    Undo(SampleInfo),
    /// These samples were deleted.
    Delete(Vec<SampleInfo>),
    /// These samples were relabelled.
    Relabel {
        /// Which.
        ids: Vec<u64>,
        /// Their class now.
        to: String,
    },
    /// A class was added.
    AddClass(String),
    /// A class was renamed (and its samples relabelled).
    RenameClass {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// A class was removed and its samples deleted.
    RemoveClass {
        /// The class.
        name: String,
        /// Its samples.
        deleted: Vec<u64>,
    },
}

/// A request to the store; echoed back in [`Input::Stored`] with the outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreRequest {
    /// Store the newest frame (its embedding and thumbnail) as a sample of `label`.
    Capture {
        /// Class name.
        label: String,
        /// Who asked.
        origin: Origin,
    },
    /// Apply a journaled edit.
    Edit {
        /// The files' change.
        edit: Edit,
        /// Its meaning.
        change: Change,
        /// Who asked.
        origin: Origin,
    },
    /// Add the staged samples of an import (and save the class list when it grew).
    Import {
        /// The samples.
        samples: Vec<SampleInfo>,
        /// The class list with the import's new classes, when it has any.
        classes: Option<Vec<String>>,
        /// Who asked.
        origin: Origin,
    },
    /// Save a head as `head.current`.
    SaveHead {
        /// The head.
        head: Arc<Head>,
        /// The generation it was made for.
        generation: u64,
    },
}

/// Everything that drives the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed (call at [`Session::next_deadline`] and after a batch of inputs).
    Tick,
    /// A frame went through the backbone.
    Frame(FrameReport),
    /// Something failed in the loop.
    Fault(Fault),
    /// A user action.
    Action {
        /// What.
        action: Action,
        /// From whom.
        origin: Origin,
    },
    /// The shell imprinted a head for `generation` (`Ok(None)`: no samples to learn from).
    Imprinted {
        /// Generation it was asked for.
        generation: u64,
        /// The head, or why not.
        head: Result<Option<Arc<Head>>, String>,
    },
    /// A background fine-tune finished.
    FineTuned {
        /// Generation it was queued for.
        generation: u64,
        /// The result, or why training failed.
        outcome: Result<FineTune, String>,
    },
    /// A store request finished.
    Stored {
        /// The request, as it was made.
        request: StoreRequest,
        /// The new sample (for a capture) or `None`; or why it was refused.
        outcome: Result<Option<SampleInfo>, Refusal>,
    },
}

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

/// Which part of the loop a fault came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Camera errors.
    Camera,
    /// Unusable frames.
    Frame,
    /// Backbone errors.
    Backbone,
    /// Store failures (captures, edits, head saves).
    Store,
    /// Imprint and fine-tune failures.
    Training,
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

/// A state change, for observers (the console, the status writer, a web console, MQTT).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The displayed class changed.
    ClassShown {
        /// Class name, `None` for "unknown".
        class: Option<String>,
        /// Top probability of the frame that decided it.
        confidence: f32,
        /// That frame's tag.
        tag: String,
    },
    /// A capture was stored (acknowledged: it survives a power cut).
    CaptureSaved {
        /// The sample.
        sample: SampleInfo,
        /// Who asked.
        origin: Origin,
    },
    /// A capture was refused.
    CaptureRefused {
        /// The class asked for.
        class: String,
        /// Why.
        reason: Refusal,
        /// Who asked.
        origin: Origin,
    },
    /// Undo removed this sample.
    Undone {
        /// The sample.
        sample: SampleInfo,
        /// Who asked.
        origin: Origin,
    },
    /// Undo found nothing to remove.
    NothingToUndo {
        /// Who asked.
        origin: Origin,
    },
    /// Samples were deleted.
    SamplesDeleted {
        /// Their ids.
        ids: Vec<u64>,
        /// Who asked.
        origin: Origin,
    },
    /// Samples were relabelled.
    SamplesRelabelled {
        /// Their ids.
        ids: Vec<u64>,
        /// Their class now.
        to: String,
        /// Who asked.
        origin: Origin,
    },
    /// A class was added.
    ClassAdded {
        /// Its name.
        name: String,
        /// Who asked.
        origin: Origin,
    },
    /// A class was renamed.
    ClassRenamed {
        /// Old name.
        from: String,
        /// New name.
        to: String,
        /// Who asked.
        origin: Origin,
    },
    /// Samples were imported.
    Imported {
        /// How many.
        samples: usize,
        /// Classes the import added.
        classes_added: Vec<String>,
        /// Who asked.
        origin: Origin,
    },
    /// A class was removed with its samples.
    ClassRemoved {
        /// Its name.
        name: String,
        /// Samples deleted with it.
        samples: usize,
        /// Who asked.
        origin: Origin,
    },
    /// An action was refused (bad name, unknown sample, store refusal of an edit).
    ActionRefused {
        /// The action.
        action: String,
        /// Why.
        reason: String,
        /// Who asked.
        origin: Origin,
    },
    /// A head became live.
    HeadSwapped {
        /// Head version (counts every head made live).
        version: u64,
        /// How it was made.
        kind: HeadKind,
        /// Samples it was made from.
        samples: usize,
        /// Its held-out accuracy, when known.
        holdout_accuracy: Option<f32>,
        /// Time since the action that caused it, ms.
        after_action_ms: Option<u64>,
    },
    /// No samples are left: no head, the answer is "unknown".
    HeadCleared,
    /// A fine-tune was queued.
    FineTuneStarted {
        /// For this generation.
        generation: u64,
        /// On this many samples.
        samples: usize,
    },
    /// A fine-tune ended.
    FineTuneFinished {
        /// Its generation.
        generation: u64,
        /// How.
        result: FineTuneResult,
    },
    /// No usable frame for longer than the timeout.
    CameraLost {
        /// Since the last usable frame (or the start), ms.
        silent_ms: u64,
    },
    /// Frames arrive again.
    CameraBack {
        /// How long it was gone, ms.
        after_ms: u64,
    },
    /// Faults of one kind since the last such event.
    Fault {
        /// Which part.
        kind: FaultKind,
        /// The latest message.
        message: String,
        /// How many since the last event of this kind.
        count: u64,
    },
    /// A fresh status snapshot (about once a second).
    Status(Arc<Status>),
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
}

/// What the session does; the shell carries it out in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Show this on the indicator.
    Show(Lamp),
    /// Ask the store; answer with [`Input::Stored`].
    Store(StoreRequest),
    /// Imprint a head from the stored samples of `classes`; answer with [`Input::Imprinted`].
    Imprint {
        /// Generation to answer for.
        generation: u64,
        /// The class list (samples of other labels are ignored).
        classes: Vec<String>,
    },
    /// Queue a background fine-tune on the stored samples of `classes` (newest request
    /// wins); answer with [`Input::FineTuned`].
    FineTune {
        /// Generation to answer for.
        generation: u64,
        /// The class list.
        classes: Vec<String>,
    },
    /// Classify frames with this head from now on (`None`: no head).
    UseHead(Option<Arc<Head>>),
    /// Tell observers.
    Publish(Event),
    /// Tell the service manager the loop is alive.
    PingWatchdog,
}

/// Knobs of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Frames the displayed class is voted over (1..=[`MAX_SMOOTHING`]).
    pub smoothing: usize,
    /// Status snapshot period, ms.
    pub status_every_ms: u64,
    /// Watchdog ping period, ms (`None`: no watchdog).
    pub watchdog_every_ms: Option<u64>,
    /// No usable frame for this long: the camera is lost, ms.
    pub camera_timeout_ms: u64,
    /// How long an alert lights every LED, ms.
    pub alert_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            smoothing: SMOOTHING,
            status_every_ms: 1000,
            watchdog_every_ms: None,
            camera_timeout_ms: 3000,
            alert_ms: 1500,
        }
    }
}

/// The head in use.
#[derive(Debug, Clone)]
struct Live {
    head: Arc<Head>,
    kind: HeadKind,
    /// The bar a fine-tune must reach to replace it.
    accuracy: Option<f32>,
    confusion: Option<Vec<Vec<usize>>>,
    /// Head class index → class list index.
    map: Vec<Option<usize>>,
}

/// An ongoing burst.
#[derive(Debug, Clone)]
struct Burst {
    label: String,
    remaining: u32,
    every_ms: u64,
    next_ms: u64,
    origin: Origin,
}

/// A fault kind's counter and report throttle.
#[derive(Debug, Clone, Default)]
struct FaultLog {
    unreported: u64,
    last_report_ms: Option<u64>,
}

/// The appliance's state (see the module docs).
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    classes: Vec<String>,
    samples: Vec<SampleInfo>,
    samples_version: u64,
    generation: u64,
    /// A new generation waits for its imprint (requested at the next tick).
    learn_due: bool,
    /// When the action that started the pending learning happened.
    action_at_ms: Option<u64>,
    /// The same, for the fine-tune of the current generation.
    finetune_action_ms: Option<u64>,
    live: Option<Live>,
    head_version: u64,
    /// A head that could not be saved, and when to try again.
    unsaved: Option<(Arc<Head>, u64, u64)>,
    save_delay_ms: u64,
    votes: HistoryBuffer<Option<usize>, MAX_SMOOTHING>,
    shown: Option<Option<usize>>,
    confidence: f32,
    frames: u64,
    fps: f64,
    fps_window: (u64, u64),
    stages: [u64; 4],
    last_frame_ms: Option<u64>,
    camera: CameraState,
    started_ms: u64,
    alert_until: Option<u64>,
    bursts: Vec<Burst>,
    next_status_ms: u64,
    next_ping_ms: u64,
    errors: Errors,
    last_error: Option<String>,
    faults: BTreeMap<&'static str, FaultLog>,
    last_fine_tune: Option<FineTuneNote>,
}

/// The class list to run with: the state directory's when it has one (it is authoritative
/// once the appliance has run), else the configured classes followed by any labels the
/// stored samples have that the configuration lacks (so an imported dataset's classes show
/// up). Returns the list and whether it differs from the state's (and must be saved).
pub fn resolve_classes(
    configured: &[String],
    stored: Option<&[String]>,
    sample_labels: &[&str],
) -> (Vec<String>, bool) {
    if let Some(s) = stored {
        return (s.to_vec(), false);
    }
    let mut v = configured.to_vec();
    for l in sample_labels {
        if !v.iter().any(|c| c == l) && check_class_name(l).is_ok() && v.len() < MAX_CLASSES {
            v.push(l.to_string());
        }
    }
    (v, true)
}

impl Session {
    /// A session at time `now_ms` with `classes`, the store's `samples`, and the head loaded
    /// from the state directory, if it fits. Without a head but with samples, the first tick
    /// asks for an imprint.
    pub fn new(
        cfg: SessionConfig,
        now_ms: u64,
        classes: Vec<String>,
        samples: Vec<SampleInfo>,
        head: Option<Arc<Head>>,
    ) -> Self {
        let mut s = Session {
            classes,
            learn_due: head.is_none() && !samples.is_empty(),
            samples,
            samples_version: 1,
            generation: 0,
            action_at_ms: None,
            finetune_action_ms: None,
            live: None,
            head_version: 0,
            unsaved: None,
            save_delay_ms: SAVE_RETRY_MS,
            votes: HistoryBuffer::new(),
            shown: None,
            confidence: 0.0,
            frames: 0,
            fps: 0.0,
            fps_window: (now_ms, 0),
            stages: [0; 4],
            last_frame_ms: None,
            camera: CameraState::Starting,
            started_ms: now_ms,
            alert_until: None,
            bursts: Vec::new(),
            next_status_ms: now_ms,
            next_ping_ms: now_ms,
            errors: Errors::default(),
            last_error: None,
            faults: BTreeMap::new(),
            last_fine_tune: None,
            cfg: SessionConfig {
                smoothing: cfg.smoothing.clamp(1, MAX_SMOOTHING),
                ..cfg
            },
        };
        if let Some(h) = head {
            let accuracy = h.info.holdout_accuracy;
            s.set_live(h, HeadKind::Loaded, accuracy, None);
        }
        s
    }

    /// The class list.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The samples the store acknowledged, oldest first.
    pub fn samples(&self) -> &[SampleInfo] {
        &self.samples
    }

    /// Changes whenever the sample list or the class list changes (for snapshot caching).
    pub fn samples_version(&self) -> u64 {
        self.samples_version
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The live head.
    pub fn head(&self) -> Option<&Arc<Head>> {
        self.live.as_ref().map(|l| &l.head)
    }

    /// When [`Session::step`] must be called again with [`Input::Tick`] at the latest.
    pub fn next_deadline(&self, now_ms: u64) -> u64 {
        let mut t = self.next_status_ms;
        if self.cfg.watchdog_every_ms.is_some() {
            t = t.min(self.next_ping_ms);
        }
        if self.learn_due {
            t = now_ms;
        }
        if self.camera != CameraState::Lost {
            let since = self.last_frame_ms.unwrap_or(self.started_ms);
            t = t.min(since + self.cfg.camera_timeout_ms + 1);
        }
        for b in &self.bursts {
            t = t.min(b.next_ms);
        }
        if let Some(a) = self.alert_until {
            t = t.min(a);
        }
        if let Some((_, _, at)) = &self.unsaved {
            t = t.min(*at);
        }
        t.max(now_ms)
    }

    /// Advance the policy by one input at `now_ms` (never earlier than the previous call's).
    pub fn step(&mut self, now_ms: u64, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        match input {
            Input::Tick => self.tick(now_ms, &mut fx),
            Input::Frame(f) => self.frame(now_ms, f, &mut fx),
            Input::Fault(f) => self.fault(now_ms, f, &mut fx),
            Input::Action { action, origin } => self.action(now_ms, action, origin, &mut fx),
            Input::Imprinted { generation, head } => {
                self.imprinted(now_ms, generation, head, &mut fx)
            }
            Input::FineTuned {
                generation,
                outcome,
            } => self.fine_tuned(now_ms, generation, outcome, &mut fx),
            Input::Stored { request, outcome } => self.stored(now_ms, request, outcome, &mut fx),
        }
        fx
    }

    // ------------------------------------------------------------------ time

    fn tick(&mut self, now: u64, fx: &mut Vec<Effect>) {
        if self.learn_due {
            self.learn_due = false;
            fx.push(Effect::Imprint {
                generation: self.generation,
                classes: self.classes.clone(),
            });
        }
        // Bursts: one capture each when due.
        let mut due = Vec::new();
        for b in &mut self.bursts {
            if now >= b.next_ms && b.remaining > 0 {
                b.remaining -= 1;
                b.next_ms = now + b.every_ms;
                due.push((b.label.clone(), b.origin));
            }
        }
        self.bursts.retain(|b| b.remaining > 0);
        for (label, origin) in due {
            self.capture(now, label, origin, fx);
        }
        // The camera: lost after the timeout without a usable frame.
        let since = self.last_frame_ms.unwrap_or(self.started_ms);
        if self.camera != CameraState::Lost && now > since + self.cfg.camera_timeout_ms {
            self.camera = CameraState::Lost;
            self.alert_until = None;
            fx.push(Effect::Show(Lamp::Alert));
            fx.push(Effect::Publish(Event::CameraLost {
                silent_ms: now - since,
            }));
        }
        if let Some(until) = self.alert_until
            && now >= until
        {
            self.alert_until = None;
            if self.camera != CameraState::Lost {
                fx.push(Effect::Show(Lamp::Class(self.shown.flatten())));
            }
        }
        if self.unsaved.as_ref().is_some_and(|u| now >= u.2)
            && let Some((head, generation, _)) = self.unsaved.take()
        {
            // The answer reschedules it if it fails again.
            fx.push(Effect::Store(StoreRequest::SaveHead { head, generation }));
        }
        if let Some(every) = self.cfg.watchdog_every_ms
            && now >= self.next_ping_ms
        {
            self.next_ping_ms = now + every.max(1);
            fx.push(Effect::PingWatchdog);
        }
        let (start, n) = self.fps_window;
        if now >= start + 1000 {
            self.fps = n as f64 * 1000.0 / (now - start) as f64;
            self.fps_window = (now, 0);
        }
        if now >= self.next_status_ms {
            self.next_status_ms = now + self.cfg.status_every_ms.max(1);
            fx.push(Effect::Publish(Event::Status(Arc::new(self.status(now)))));
        }
    }

    // ---------------------------------------------------------------- frames

    /// A usable frame arrived (whatever the backbone then made of it).
    fn camera_alive(&mut self, now: u64, fx: &mut Vec<Effect>) {
        if self.camera == CameraState::Lost {
            let since = self.last_frame_ms.unwrap_or(self.started_ms);
            fx.push(Effect::Show(Lamp::Class(self.shown.flatten())));
            fx.push(Effect::Publish(Event::CameraBack {
                after_ms: now - since,
            }));
        }
        self.camera = CameraState::Live;
        self.last_frame_ms = Some(now);
    }

    fn frame(&mut self, now: u64, f: FrameReport, fx: &mut Vec<Effect>) {
        self.camera_alive(now, fx);
        self.frames += 1;
        self.fps_window.1 += 1;
        let s = f.stages;
        for (acc, v) in
            self.stages
                .iter_mut()
                .zip([s.decode_us, s.preprocess_us, s.backbone_us, s.head_us])
        {
            *acc += v;
        }
        let (Some(g), Some(live)) = (f.guess, &self.live) else {
            return;
        };
        self.confidence = g.confidence;
        let class = g.class.and_then(|i| live.map.get(i).copied().flatten());
        if let Some(change) = self.vote(class) {
            self.shown = Some(change);
            if self.alert_until.is_none() && self.camera != CameraState::Lost {
                fx.push(Effect::Show(Lamp::Class(change)));
            }
            fx.push(Effect::Publish(Event::ClassShown {
                class: change.map(|k| self.classes[k].clone()),
                confidence: g.confidence,
                tag: f.tag,
            }));
        }
    }

    /// Majority vote over the window; the new decision when it changes.
    fn vote(&mut self, class: Option<usize>) -> Option<Option<usize>> {
        self.votes.write(class);
        let skip = self.votes.len().saturating_sub(self.cfg.smoothing);
        let recent: heapless::Vec<Option<usize>, MAX_SMOOTHING> =
            self.votes.oldest_ordered().skip(skip).copied().collect();
        let mut best: (Option<usize>, usize) = (None, 0);
        for v in &recent {
            let n = recent.iter().filter(|w| *w == v).count();
            if n > best.1 {
                best = (*v, n);
            }
        }
        // The display changes only when one answer has a strict majority of the window.
        if best.1 * 2 <= recent.len() || self.shown == Some(best.0) {
            return None;
        }
        Some(best.0)
    }

    fn fault(&mut self, now: u64, f: Fault, fx: &mut Vec<Effect>) {
        let (kind, message) = match f {
            Fault::Camera(m) => {
                self.errors.camera += 1;
                (FaultKind::Camera, m)
            }
            Fault::Frame(m) => {
                self.errors.frame += 1;
                (FaultKind::Frame, m)
            }
            Fault::Backbone(m) => {
                // The camera delivered; the model failed on it.
                self.camera_alive(now, fx);
                self.errors.backbone += 1;
                (FaultKind::Backbone, m)
            }
        };
        self.report_fault(now, kind, message, fx);
    }

    /// Record a fault; publish (and alert) at most once per kind per [`FAULT_REPORT_MS`].
    fn report_fault(&mut self, now: u64, kind: FaultKind, message: String, fx: &mut Vec<Effect>) {
        self.last_error = Some(message.clone());
        let key = match kind {
            FaultKind::Camera => "camera",
            FaultKind::Frame => "frame",
            FaultKind::Backbone => "backbone",
            FaultKind::Store => "store",
            FaultKind::Training => "training",
        };
        let log = self.faults.entry(key).or_default();
        log.unreported += 1;
        if log
            .last_report_ms
            .is_some_and(|t| now < t + FAULT_REPORT_MS)
        {
            return;
        }
        let count = log.unreported;
        log.unreported = 0;
        log.last_report_ms = Some(now);
        self.alert(now, fx);
        fx.push(Effect::Publish(Event::Fault {
            kind,
            message,
            count,
        }));
    }

    /// Light every LED for a while (unless the camera-lost alert is on anyway).
    fn alert(&mut self, now: u64, fx: &mut Vec<Effect>) {
        if self.camera == CameraState::Lost {
            return;
        }
        if self.alert_until.is_none() {
            fx.push(Effect::Show(Lamp::Alert));
        }
        self.alert_until = Some(now + self.cfg.alert_ms);
    }

    // --------------------------------------------------------------- actions

    fn resolve(&self, class: &ClassRef) -> Result<String, String> {
        match class {
            ClassRef::Index(k) => self.classes.get(*k).cloned().ok_or_else(|| {
                format!(
                    "there is no class #{} ({} classes)",
                    k + 1,
                    self.classes.len()
                )
            }),
            ClassRef::Name(n) => self
                .classes
                .iter()
                .find(|c| *c == n)
                .cloned()
                .ok_or_else(|| format!("there is no class {n:?}")),
        }
    }

    fn action(&mut self, now: u64, action: Action, origin: Origin, fx: &mut Vec<Effect>) {
        match self.plan(now, &action, origin) {
            Ok(Plan::Capture(label)) => self.capture(now, label, origin, fx),
            Ok(Plan::Burst(b)) => self.bursts.push(b),
            Ok(Plan::Edit(edit, change)) => fx.push(Effect::Store(StoreRequest::Edit {
                edit,
                change,
                origin,
            })),
            Ok(Plan::Import(samples, classes)) => fx.push(Effect::Store(StoreRequest::Import {
                samples,
                classes,
                origin,
            })),
            Ok(Plan::NothingToUndo) => fx.push(Effect::Publish(Event::NothingToUndo { origin })),
            Err(reason) => match &action {
                Action::Capture(c) | Action::Burst { class: c, .. } => {
                    self.refuse_capture(now, c.to_string(), Refusal::Failed(reason), origin, fx);
                }
                _ => fx.push(Effect::Publish(Event::ActionRefused {
                    action: format!("{action:?}"),
                    reason,
                    origin,
                })),
            },
        }
    }

    /// Check an action against the current state and say what it takes.
    fn plan(&self, now: u64, action: &Action, origin: Origin) -> Result<Plan, String> {
        let ids_known = |ids: &[u64]| -> Result<Vec<SampleInfo>, String> {
            if ids.is_empty() {
                return Err("no sample ids given".into());
            }
            let mut out: Vec<SampleInfo> = Vec::new();
            for id in ids {
                let s = self
                    .samples
                    .iter()
                    .find(|s| s.id == *id)
                    .ok_or_else(|| format!("there is no sample {id}"))?;
                if !out.iter().any(|o| o.id == *id) {
                    out.push(s.clone());
                }
            }
            Ok(out)
        };
        let new_name = |name: &str| -> Result<(), String> {
            check_class_name(name).map_err(|why| format!("class {name:?} {why}"))?;
            if self.classes.iter().any(|c| c == name) {
                return Err(format!("class {name:?} exists already"));
            }
            Ok(())
        };
        Ok(match action {
            Action::Capture(c) => Plan::Capture(self.resolve(c)?),
            Action::Burst {
                class,
                count,
                every_ms,
            } => {
                if !(1..=MAX_BURST).contains(count) || *every_ms < MIN_BURST_MS {
                    return Err(format!(
                        "a burst is 1..={MAX_BURST} captures at least {MIN_BURST_MS} ms apart"
                    ));
                }
                Plan::Burst(Burst {
                    label: self.resolve(class)?,
                    remaining: *count,
                    every_ms: *every_ms,
                    next_ms: now,
                    origin,
                })
            }
            Action::Undo => match self.samples.iter().max_by_key(|s| s.id) {
                None => Plan::NothingToUndo,
                Some(s) => Plan::Edit(Edit::delete(vec![s.id]), Change::Undo(s.clone())),
            },
            Action::AddClass(name) => {
                new_name(name)?;
                if self.classes.len() >= MAX_CLASSES {
                    return Err(format!("at most {MAX_CLASSES} classes"));
                }
                let mut classes = self.classes.clone();
                classes.push(name.clone());
                Plan::Edit(
                    Edit {
                        classes: Some(classes),
                        ..Edit::default()
                    },
                    Change::AddClass(name.clone()),
                )
            }
            Action::RenameClass { from, to } => {
                let k = self.class_index(from)?;
                new_name(to)?;
                let mut classes = self.classes.clone();
                classes[k] = to.clone();
                let ids: Vec<u64> = self.ids_of(from);
                Plan::Edit(
                    Edit {
                        relabel: ids.iter().map(|&id| (id, to.clone())).collect(),
                        classes: Some(classes),
                        ..Edit::default()
                    },
                    Change::RenameClass {
                        from: from.clone(),
                        to: to.clone(),
                    },
                )
            }
            Action::RemoveClass(name) => {
                let k = self.class_index(name)?;
                let mut classes = self.classes.clone();
                classes.remove(k);
                let deleted = self.ids_of(name);
                Plan::Edit(
                    Edit {
                        delete: deleted.clone(),
                        classes: Some(classes),
                        ..Edit::default()
                    },
                    Change::RemoveClass {
                        name: name.clone(),
                        deleted,
                    },
                )
            }
            Action::DeleteSamples(ids) => {
                let samples = ids_known(ids)?;
                Plan::Edit(
                    Edit::delete(samples.iter().map(|s| s.id).collect()),
                    Change::Delete(samples),
                )
            }
            Action::Import(samples) => self.plan_import(samples)?,
            Action::RelabelSamples { ids, to } => {
                self.class_index(to)?;
                let samples = ids_known(ids)?;
                let ids: Vec<u64> = samples.iter().map(|s| s.id).collect();
                Plan::Edit(
                    Edit {
                        relabel: ids.iter().map(|&id| (id, to.clone())).collect(),
                        ..Edit::default()
                    },
                    Change::Relabel {
                        ids,
                        to: to.clone(),
                    },
                )
            }
        })
    }

    /// An import adds samples of unknown ids; its new labels must be class names and fit
    /// in [`MAX_CLASSES`].
    fn plan_import(&self, samples: &[SampleInfo]) -> Result<Plan, String> {
        if samples.is_empty() {
            return Err("nothing to import".into());
        }
        let ids: std::collections::HashSet<u64> = self.samples.iter().map(|s| s.id).collect();
        if let Some(s) = samples.iter().find(|s| ids.contains(&s.id)) {
            return Err(format!("sample {} exists already", s.id));
        }
        let mut classes = self.classes.clone();
        for s in samples {
            if !classes.contains(&s.label) {
                check_class_name(&s.label).map_err(|why| format!("class {:?} {why}", s.label))?;
                classes.push(s.label.clone());
            }
        }
        if classes.len() > MAX_CLASSES {
            return Err(format!(
                "the import brings {} new classes; at most {MAX_CLASSES} classes in all",
                classes.len() - self.classes.len()
            ));
        }
        let grew = (classes.len() > self.classes.len()).then_some(classes);
        Ok(Plan::Import(samples.to_vec(), grew))
    }

    fn class_index(&self, name: &str) -> Result<usize, String> {
        self.classes
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| format!("there is no class {name:?}"))
    }

    fn ids_of(&self, label: &str) -> Vec<u64> {
        self.samples
            .iter()
            .filter(|s| s.label == label)
            .map(|s| s.id)
            .collect()
    }

    fn capture(&mut self, now: u64, label: String, origin: Origin, fx: &mut Vec<Effect>) {
        let fresh = self
            .last_frame_ms
            .is_some_and(|t| now <= t + self.cfg.camera_timeout_ms)
            && self.camera == CameraState::Live;
        if !fresh {
            self.refuse_capture(now, label, Refusal::NoFrame, origin, fx);
            return;
        }
        fx.push(Effect::Store(StoreRequest::Capture { label, origin }));
    }

    fn refuse_capture(
        &mut self,
        now: u64,
        class: String,
        reason: Refusal,
        origin: Origin,
        fx: &mut Vec<Effect>,
    ) {
        self.errors.captures_refused += 1;
        // A burst of this requester stops at its first refusal (a full disk stays full).
        self.bursts.retain(|b| b.origin != origin);
        let why = format!("capture of {class:?} refused: {reason}");
        let event = Event::CaptureRefused {
            class,
            reason,
            origin,
        };
        self.refuse(now, why, event, fx);
    }

    /// A refusal the user must see: the last error, an alert on the LEDs, the event.
    fn refuse(&mut self, now: u64, why: String, event: Event, fx: &mut Vec<Effect>) {
        self.last_error = Some(why);
        self.alert(now, fx);
        fx.push(Effect::Publish(event));
    }

    // ----------------------------------------------------------------- store

    fn stored(
        &mut self,
        now: u64,
        request: StoreRequest,
        outcome: Result<Option<SampleInfo>, Refusal>,
        fx: &mut Vec<Effect>,
    ) {
        let refusal = match outcome {
            Ok(sample) => {
                self.store_done(request, sample, fx);
                return;
            }
            Err(r) => r,
        };
        if !matches!(refusal, Refusal::NoFrame | Refusal::BadFrame(_)) {
            self.errors.store += 1;
        }
        match request {
            StoreRequest::Capture { label, origin } => {
                self.refuse_capture(now, label, refusal, origin, fx);
            }
            StoreRequest::Edit { change, origin, .. } => {
                self.refuse_edit(now, format!("{change:?}"), refusal, origin, fx);
            }
            StoreRequest::Import {
                samples, origin, ..
            } => {
                let what = format!("Import({} samples)", samples.len());
                self.refuse_edit(now, what, refusal, origin, fx);
            }
            StoreRequest::SaveHead { head, generation } => {
                // Retry with backoff, unless a newer head replaced it meanwhile.
                if self
                    .live
                    .as_ref()
                    .is_some_and(|l| Arc::ptr_eq(&l.head, &head))
                {
                    let delay = self.save_delay_ms;
                    self.save_delay_ms = (delay * 2).min(60_000);
                    self.unsaved = Some((head, generation, now + delay));
                }
                self.report_fault(
                    now,
                    FaultKind::Store,
                    format!("head not saved: {refusal}"),
                    fx,
                );
            }
        }
    }

    fn refuse_edit(
        &mut self,
        now: u64,
        action: String,
        refusal: Refusal,
        origin: Origin,
        fx: &mut Vec<Effect>,
    ) {
        let reason = refusal.to_string();
        let event = Event::ActionRefused {
            action,
            reason: reason.clone(),
            origin,
        };
        self.refuse(now, reason, event, fx);
    }

    fn store_done(
        &mut self,
        request: StoreRequest,
        sample: Option<SampleInfo>,
        fx: &mut Vec<Effect>,
    ) {
        match request {
            StoreRequest::Capture { origin, .. } => {
                let Some(sample) = sample else { return };
                self.samples.push(sample.clone());
                self.changed(origin);
                fx.push(Effect::Publish(Event::CaptureSaved { sample, origin }));
            }
            StoreRequest::Edit { change, origin, .. } => {
                let event = self.apply_change(change, origin);
                self.changed(origin);
                fx.push(Effect::Publish(event));
            }
            StoreRequest::Import {
                samples,
                classes,
                origin,
            } => {
                let n = samples.len();
                self.samples.extend(samples);
                self.samples.sort_by_key(|s| s.id);
                let before = self.classes.len();
                if let Some(classes) = classes {
                    self.classes = classes;
                }
                let classes_added = self.classes[before.min(self.classes.len())..].to_vec();
                self.changed(origin);
                fx.push(Effect::Publish(Event::Imported {
                    samples: n,
                    classes_added,
                    origin,
                }));
            }
            StoreRequest::SaveHead { .. } => {
                self.save_delay_ms = SAVE_RETRY_MS;
            }
        }
    }

    /// Update the mirrors for a committed edit; the event that tells it.
    fn apply_change(&mut self, change: Change, origin: Origin) -> Event {
        match change {
            Change::Undo(sample) => {
                self.samples.retain(|s| s.id != sample.id);
                Event::Undone { sample, origin }
            }
            Change::Delete(gone) => {
                self.samples.retain(|s| !gone.iter().any(|g| g.id == s.id));
                Event::SamplesDeleted {
                    ids: gone.iter().map(|s| s.id).collect(),
                    origin,
                }
            }
            Change::Relabel { ids, to } => {
                for s in self.samples.iter_mut().filter(|s| ids.contains(&s.id)) {
                    s.label = to.clone();
                }
                Event::SamplesRelabelled { ids, to, origin }
            }
            Change::AddClass(name) => {
                self.classes.push(name.clone());
                Event::ClassAdded { name, origin }
            }
            Change::RenameClass { from, to } => {
                for c in self.classes.iter_mut().filter(|c| **c == from) {
                    *c = to.clone();
                }
                for s in self.samples.iter_mut().filter(|s| s.label == from) {
                    s.label = to.clone();
                }
                for b in self.bursts.iter_mut().filter(|b| b.label == from) {
                    b.label = to.clone();
                }
                Event::ClassRenamed { from, to, origin }
            }
            Change::RemoveClass { name, deleted } => {
                self.classes.retain(|c| *c != name);
                // Positions after it moved: the display starts over.
                self.votes.clear();
                self.shown = None;
                self.samples.retain(|s| !deleted.contains(&s.id));
                self.bursts.retain(|b| b.label != name);
                Event::ClassRemoved {
                    name,
                    samples: deleted.len(),
                    origin,
                }
            }
        }
    }

    /// Samples or classes changed: a new generation, learned at the next tick.
    fn changed(&mut self, origin: Origin) {
        self.generation += 1;
        self.samples_version += 1;
        self.learn_due = true;
        self.action_at_ms = Some(
            self.action_at_ms
                .map_or(origin.at_ms, |t| t.min(origin.at_ms)),
        );
        if let Some(live) = &mut self.live {
            // Class positions may have moved: re-map the live head's classes by name.
            live.map = map_classes(&live.head, &self.classes);
        }
    }

    // ----------------------------------------------------------------- heads

    fn set_live(
        &mut self,
        head: Arc<Head>,
        kind: HeadKind,
        accuracy: Option<f32>,
        confusion: Option<Vec<Vec<usize>>>,
    ) {
        self.head_version += 1;
        self.live = Some(Live {
            map: map_classes(&head, &self.classes),
            head,
            kind,
            accuracy,
            confusion,
        });
    }

    fn imprinted(
        &mut self,
        now: u64,
        generation: u64,
        head: Result<Option<Arc<Head>>, String>,
        fx: &mut Vec<Effect>,
    ) {
        if generation != self.generation {
            return;
        }
        let action_at = self.action_at_ms.take();
        let after = action_at.map(|t| now.saturating_sub(t));
        match head {
            Ok(Some(h)) => {
                let samples = h.info.samples_per_class.iter().sum();
                self.set_live(Arc::clone(&h), HeadKind::Imprinted, None, None);
                self.finetune_action_ms = action_at;
                self.unsaved = None;
                fx.push(Effect::UseHead(Some(Arc::clone(&h))));
                fx.push(Effect::Store(StoreRequest::SaveHead {
                    head: h,
                    generation,
                }));
                fx.push(Effect::FineTune {
                    generation,
                    classes: self.classes.clone(),
                });
                fx.push(Effect::Publish(Event::HeadSwapped {
                    version: self.head_version,
                    kind: HeadKind::Imprinted,
                    samples,
                    holdout_accuracy: None,
                    after_action_ms: after,
                }));
                fx.push(Effect::Publish(Event::FineTuneStarted {
                    generation,
                    samples,
                }));
            }
            Ok(None) => {
                if self.live.take().is_some() {
                    self.votes.clear();
                    self.shown = Some(None);
                    fx.push(Effect::UseHead(None));
                    fx.push(Effect::Show(Lamp::Class(None)));
                    fx.push(Effect::Publish(Event::HeadCleared));
                }
            }
            Err(e) => {
                self.errors.training += 1;
                self.report_fault(now, FaultKind::Training, format!("imprint failed: {e}"), fx);
            }
        }
    }

    fn fine_tuned(
        &mut self,
        now: u64,
        generation: u64,
        outcome: Result<FineTune, String>,
        fx: &mut Vec<Effect>,
    ) {
        let result = match outcome {
            Err(message) => {
                self.errors.training += 1;
                self.report_fault(
                    now,
                    FaultKind::Training,
                    format!("fine-tune failed: {message}"),
                    fx,
                );
                FineTuneResult::Failed { message }
            }
            Ok(_) if generation != self.generation => FineTuneResult::Stale,
            Ok(ft) => {
                let live = self.live.as_ref();
                // The bar: the live head's held-out accuracy; for an imprinted head, the
                // imprint's accuracy on the fine-tune's own folds.
                let needed = live
                    .and_then(|l| l.accuracy)
                    .or(ft.imprint_accuracy)
                    .unwrap_or(0.0);
                // No held-out estimate (too few samples): nothing says it is worse.
                let accuracy = ft.holdout_accuracy.unwrap_or(1.0);
                if accuracy + 1e-6 >= needed {
                    let samples = ft.head.info.samples_per_class.iter().sum();
                    self.set_live(
                        Arc::clone(&ft.head),
                        HeadKind::FineTuned,
                        ft.holdout_accuracy,
                        ft.confusion.clone(),
                    );
                    self.unsaved = None;
                    fx.push(Effect::UseHead(Some(Arc::clone(&ft.head))));
                    fx.push(Effect::Store(StoreRequest::SaveHead {
                        head: ft.head,
                        generation,
                    }));
                    fx.push(Effect::Publish(Event::HeadSwapped {
                        version: self.head_version,
                        kind: HeadKind::FineTuned,
                        samples,
                        holdout_accuracy: ft.holdout_accuracy,
                        after_action_ms: self
                            .finetune_action_ms
                            .take()
                            .map(|t| now.saturating_sub(t)),
                    }));
                    FineTuneResult::Swapped {
                        version: self.head_version,
                    }
                } else {
                    FineTuneResult::KeptOut { accuracy, needed }
                }
            }
        };
        self.last_fine_tune = Some(FineTuneNote {
            at_ms: now - self.started_ms,
            generation,
            result: result.clone(),
        });
        fx.push(Effect::Publish(Event::FineTuneFinished {
            generation,
            result,
        }));
    }

    // ---------------------------------------------------------------- status

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
        }
    }
}

/// What an action takes.
enum Plan {
    Capture(String),
    Burst(Burst),
    Edit(Edit, Change),
    Import(Vec<SampleInfo>, Option<Vec<String>>),
    NothingToUndo,
}

fn map_classes(head: &Head, classes: &[String]) -> Vec<Option<usize>> {
    head.classes
        .iter()
        .map(|hc| classes.iter().position(|c| c == hc))
        .collect()
}
