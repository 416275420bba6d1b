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
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the [`Session`] state, its construction, [`Session::step`]'s dispatch, the tick, deadlines |
//! | `input.rs`, `origin.rs` | what drives it: [`Input`], [`Action`], [`Origin`] |
//! | `output.rs` | what it gives back: [`Effect`], [`StoreRequest`], [`Event`] |
//! | `status.rs` | the observers' snapshot ([`Status`]) and the states it reports |
//! | `frames.rs` | frames voted into the shown class, the camera lost and found, faults |
//! | `teach.rs` | actions checked and planned, store answers applied to the mirrors |
//! | `learn.rs` | imprints and fine-tunes: which head is live |
//! | `buttons.rs` | what each button means |
//!
//! Must not: read clocks, sleep, do I/O or start threads; it never fails (bad inputs become
//! refusals and events). Invariant: the sample and class mirrors equal what the store has
//! acknowledged.

pub mod buttons;
mod frames;
mod input;
mod learn;
mod origin;
mod output;
mod status;
mod teach;
#[cfg(test)]
mod tests;

pub use input::{Action, ClassRef, Fault, FineTune, FrameReport, Guess, Input, Stages};
pub use learn::fine_tune_wins;
pub use origin::{Origin, RequestId, Source};
pub use output::{Change, Effect, Event, FaultKind, Refusal, StoreRequest};
pub use status::{
    CameraState, Errors, FineTuneNote, FineTuneResult, HeadKind, HeadStatus, StageReport,
    StageShare, Status,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use heapless::HistoryBuffer;

use crate::frame::check_class_name;
use crate::gpio::Lamp;
use crate::head::Head;
use crate::store::SampleInfo;

/// Largest smoothing window, frames.
pub const MAX_SMOOTHING: usize = 16;
/// Default smoothing window, frames.
pub const SMOOTHING: usize = 5;
/// Most captures one burst action may ask for.
pub const MAX_BURST: u32 = 100;
/// Shortest period between two captures of a burst, ms.
pub const MIN_BURST_MS: u64 = 50;
/// Frames a press captures by default: a short burst, so one press shows the object a little
/// differently several times (a hand-held object moves).
pub const PRESS_FRAMES: u32 = 5;
/// Milliseconds between a press's frames by default (5 frames over 0.8 s).
pub const PRESS_EVERY_MS: u64 = 200;
/// At most one unsure frame to the inbox in this long by default, ms.
pub const INBOX_EVERY_MS: u64 = 10_000;
/// A best class that beats the second by less than this is unsure by default.
pub const INBOX_MARGIN: f32 = 0.2;
/// Most classes a session keeps.
pub const MAX_CLASSES: usize = 64;
/// At most one [`Event::Fault`] per kind in this long, ms (the counters count every one).
pub const FAULT_REPORT_MS: u64 = 10_000;
/// First retry delay of a head that could not be saved, ms (doubling up to 60 s).
pub const SAVE_RETRY_MS: u64 = 1000;

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
    /// Frames one press captures (1..=[`MAX_BURST`]; `[teach] burst`).
    pub press_frames: u32,
    /// Milliseconds between a press's frames (at least [`MIN_BURST_MS`]).
    pub press_every_ms: u64,
    /// At most one frame to the inbox in this long, ms (0: no inbox).
    pub inbox_every_ms: u64,
    /// A frame whose best class beats the second by less than this is unsure.
    pub inbox_margin: f32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            smoothing: SMOOTHING,
            status_every_ms: 1000,
            watchdog_every_ms: None,
            camera_timeout_ms: 3000,
            alert_ms: 1500,
            press_frames: PRESS_FRAMES,
            press_every_ms: PRESS_EVERY_MS,
            inbox_every_ms: INBOX_EVERY_MS,
            inbox_margin: INBOX_MARGIN,
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
    /// The press's first sample, once stored: the rest of the burst continue it.
    press: Option<u64>,
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
    /// No unsure frame to the inbox before this.
    inbox_next_ms: u64,
    /// The previous frame's answer (class list index, `None` for unknown), for flips.
    last_answer: Option<Option<usize>>,
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
            inbox_next_ms: 0,
            last_answer: None,
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
                due.push((b.label.clone(), b.origin, b.press));
            }
        }
        self.bursts.retain(|b| b.remaining > 0);
        for (label, origin, press) in due {
            self.capture(now, label, origin, press, fx);
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
}
