//! What drives the session: user [`Action`]s with their [`Origin`], the head's [`Guess`] for a
//! frame, [`Fault`]s, finished fine-tunes, and the store's answers ([`Input::Stored`]).
//!
//! Must not: hold behaviour; these are plain values the shell builds and the core reads.

use std::fmt;
use std::sync::Arc;

use super::origin::Origin;
use super::output::{Refusal, StoreRequest};
use crate::head::Head;
use crate::store::SampleInfo;

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
    /// Store an inbox frame as a sample of a class (the inbox forgets it once stored).
    LabelInbox {
        /// The inbox frame.
        id: u64,
        /// Its class.
        class: ClassRef,
    },
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
    /// The head's best class (index into the head's classes), whatever its probability.
    pub best: usize,
    /// Its probability minus the second best's (1 with one class).
    pub margin: f32,
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
