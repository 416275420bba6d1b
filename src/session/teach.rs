//! What the user asks for: an [`Action`] is checked against the classes and samples
//! ([`Session::plan`]: captures, bursts, class and sample edits, imports), becomes a store
//! request, and the store's answer (done or refused) updates the mirrors and is published.
//!
//! Must not: read clocks or do I/O; a bad request becomes a refusal event, never a failure.

use std::sync::Arc;

use super::input::{Action, ClassRef};
use super::origin::Origin;
use super::output::{Change, Effect, Event, FaultKind, Refusal, StoreRequest};
use super::status::CameraState;
use super::{Burst, MAX_BURST, MAX_CLASSES, MIN_BURST_MS, SAVE_RETRY_MS, Session};
use crate::frame::check_class_name;
use crate::store::{Edit, SampleInfo};

impl Session {
    pub(super) fn resolve(&self, class: &ClassRef) -> Result<String, String> {
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

    pub(super) fn action(
        &mut self,
        now: u64,
        action: Action,
        origin: Origin,
        fx: &mut Vec<Effect>,
    ) {
        match self.plan(now, &action, origin) {
            Ok(Plan::Capture(label)) => self.capture(now, label, origin, None, fx),
            Ok(Plan::FromInbox(id, label)) => {
                fx.push(Effect::Store(StoreRequest::FromInbox { id, label, origin }));
            }
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
                Action::Capture(c)
                | Action::Burst { class: c, .. }
                | Action::LabelInbox { class: c, .. } => {
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
    pub(super) fn plan(&self, now: u64, action: &Action, origin: Origin) -> Result<Plan, String> {
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
            // A press is a burst when the configuration says so (`[teach] burst`).
            Action::Capture(c) if self.cfg.press_frames > 1 => Plan::Burst(Burst {
                label: self.resolve(c)?,
                remaining: self.cfg.press_frames,
                every_ms: self.cfg.press_every_ms,
                next_ms: now,
                origin,
                press: None,
            }),
            Action::Capture(c) => Plan::Capture(self.resolve(c)?),
            Action::LabelInbox { id, class } => Plan::FromInbox(*id, self.resolve(class)?),
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
                    press: None,
                })
            }
            // The newest press goes whole: a burst's frames are one press.
            Action::Undo => match self.samples.iter().max_by_key(|s| s.id) {
                None => Plan::NothingToUndo,
                Some(newest) => {
                    let mut press: Vec<SampleInfo> = self
                        .samples
                        .iter()
                        .filter(|s| s.press == newest.press)
                        .cloned()
                        .collect();
                    press.sort_by_key(|s| s.id);
                    let ids = press.iter().map(|s| s.id).collect();
                    Plan::Edit(Edit::delete(ids), Change::Undo(press))
                }
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
    pub(super) fn plan_import(&self, samples: &[SampleInfo]) -> Result<Plan, String> {
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

    pub(super) fn class_index(&self, name: &str) -> Result<usize, String> {
        self.classes
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| format!("there is no class {name:?}"))
    }

    pub(super) fn ids_of(&self, label: &str) -> Vec<u64> {
        self.samples
            .iter()
            .filter(|s| s.label == label)
            .map(|s| s.id)
            .collect()
    }

    pub(super) fn capture(
        &mut self,
        now: u64,
        label: String,
        origin: Origin,
        press: Option<u64>,
        fx: &mut Vec<Effect>,
    ) {
        let fresh = self
            .last_frame_ms
            .is_some_and(|t| now <= t + self.cfg.camera_timeout_ms)
            && self.camera == CameraState::Live;
        if !fresh {
            self.refuse_capture(now, label, Refusal::NoFrame, origin, fx);
            return;
        }
        fx.push(Effect::Store(StoreRequest::Capture {
            label,
            origin,
            press,
        }));
    }

    pub(super) fn refuse_capture(
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
    pub(super) fn refuse(&mut self, now: u64, why: String, event: Event, fx: &mut Vec<Effect>) {
        self.last_error = Some(why);
        self.alert(now, fx);
        fx.push(Effect::Publish(event));
    }

    // ----------------------------------------------------------------- store

    pub(super) fn stored(
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
            StoreRequest::Capture { label, origin, .. }
            | StoreRequest::FromInbox { label, origin, .. } => {
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

    pub(super) fn refuse_edit(
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

    pub(super) fn store_done(
        &mut self,
        request: StoreRequest,
        sample: Option<SampleInfo>,
        fx: &mut Vec<Effect>,
    ) {
        match request {
            StoreRequest::Capture { origin, .. } | StoreRequest::FromInbox { origin, .. } => {
                let Some(sample) = sample else { return };
                // The rest of a burst continues this press.
                for b in self.bursts.iter_mut().filter(|b| b.origin == origin) {
                    b.press.get_or_insert(sample.press);
                }
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
    pub(super) fn apply_change(&mut self, change: Change, origin: Origin) -> Event {
        match change {
            Change::Undo(press) => {
                self.samples.retain(|s| !press.iter().any(|p| p.id == s.id));
                let ids = press.iter().map(|s| s.id).collect();
                match press.last() {
                    Some(sample) => Event::Undone {
                        sample: sample.clone(),
                        ids,
                        origin,
                    },
                    None => Event::NothingToUndo { origin },
                }
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
}

/// What an action takes.
pub(super) enum Plan {
    Capture(String),
    FromInbox(u64, String),
    Burst(Burst),
    Edit(Edit, Change),
    Import(Vec<SampleInfo>, Option<Vec<String>>),
    NothingToUndo,
}
