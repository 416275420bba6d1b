//! The session's reading of the camera: each frame's guess voted into the shown class, the
//! camera lost and found, faults counted and reported at most every [`super::FAULT_REPORT_MS`],
//! and the alert on the indicator.
//!
//! Must not: read clocks or do I/O (the shell passes the time in).

use super::input::{Fault, FrameReport};
use super::output::{Effect, Event, FaultKind};
use super::status::CameraState;
use super::{FAULT_REPORT_MS, MAX_SMOOTHING, Session};
use crate::gpio::Lamp;
use crate::inbox::Reason;

impl Session {
    /// A usable frame arrived (whatever the backbone then made of it).
    pub(super) fn camera_alive(&mut self, now: u64, fx: &mut Vec<Effect>) {
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

    pub(super) fn frame(&mut self, now: u64, f: FrameReport, fx: &mut Vec<Effect>) {
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
        let best = live.map.get(g.best).copied().flatten();
        self.unsure(now, class, best, g.confidence, g.margin, fx);
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

    /// Send the frame to the inbox when it is unsure (below the threshold, a small margin over
    /// the second class, or another answer than the previous frame's), at most once every
    /// `inbox_every_ms`.
    fn unsure(
        &mut self,
        now: u64,
        answer: Option<usize>,
        best: Option<usize>,
        confidence: f32,
        margin: f32,
        fx: &mut Vec<Effect>,
    ) {
        let previous = self.last_answer.replace(answer);
        if self.cfg.inbox_every_ms == 0 || now < self.inbox_next_ms {
            return;
        }
        let reason = if answer.is_none() {
            Reason::Unknown
        } else if margin < self.cfg.inbox_margin {
            Reason::LowMargin
        } else if previous.is_some_and(|p| p != answer) {
            Reason::Flip
        } else {
            return;
        };
        self.inbox_next_ms = now + self.cfg.inbox_every_ms;
        fx.push(Effect::Inbox {
            reason,
            guess: best.map(|k| self.classes[k].clone()),
            confidence,
        });
    }

    /// Majority vote over the window; the new decision when it changes.
    pub(super) fn vote(&mut self, class: Option<usize>) -> Option<Option<usize>> {
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

    pub(super) fn fault(&mut self, now: u64, f: Fault, fx: &mut Vec<Effect>) {
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
    pub(super) fn report_fault(
        &mut self,
        now: u64,
        kind: FaultKind,
        message: String,
        fx: &mut Vec<Effect>,
    ) {
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
    pub(super) fn alert(&mut self, now: u64, fx: &mut Vec<Effect>) {
        if self.camera == CameraState::Lost {
            return;
        }
        if self.alert_until.is_none() {
            fx.push(Effect::Show(Lamp::Alert));
        }
        self.alert_until = Some(now + self.cfg.alert_ms);
    }

    // --------------------------------------------------------------- actions
}
