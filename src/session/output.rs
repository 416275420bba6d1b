//! What the session gives back: [`Effect`]s for the shell to carry out in order, the
//! [`StoreRequest`]s among them with the [`Change`] each means, and the [`Event`]s observers
//! see.
//!
//! Must not: hold behaviour; these are plain values the core builds and the shell reads.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::origin::Origin;
use super::status::{FineTuneResult, HeadKind, Status};
use crate::gpio::Lamp;
use crate::head::Head;
use crate::store::{Edit, SampleInfo};

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
    /// Undo: the newest press's samples were removed (oldest first).
    Undo(Vec<SampleInfo>),
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
        /// The press this capture continues (its first sample's id); `None` starts one.
        press: Option<u64>,
    },
    /// Store inbox frame `id` as a sample of `label` (its own press).
    FromInbox {
        /// The inbox frame.
        id: u64,
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
    /// Undo removed the newest press.
    Undone {
        /// Its newest sample.
        sample: SampleInfo,
        /// Every sample of the press (a burst's frames), oldest first.
        ids: Vec<u64>,
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

/// What the session does; the shell carries it out in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Show this on the indicator.
    Show(Lamp),
    /// Keep the newest frame in the inbox of unsure frames (the shell hands it to the inbox's
    /// writer without waiting; a full queue drops it).
    Inbox {
        /// Why it is unsure.
        reason: crate::inbox::Reason,
        /// The head's best class for it.
        guess: Option<String>,
        /// That class's probability.
        confidence: f32,
    },
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
