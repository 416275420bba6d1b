//! Heads: a new generation of samples is imprinted, the imprint used and saved, a fine-tune
//! queued; a fine-tune of the current generation replaces the live head only when its
//! held-out accuracy is no worse.
//!
//! Must not: train (the shell does, on its own threads) or read clocks.

use std::sync::Arc;

use super::input::FineTune;
use super::origin::Origin;
use super::output::{Effect, Event, FaultKind, StoreRequest};
use super::status::{FineTuneNote, FineTuneResult, HeadKind};
use super::{Live, Session};
use crate::gpio::Lamp;
use crate::head::Head;

impl Session {
    /// Samples or classes changed: a new generation, learned at the next tick.
    pub(super) fn changed(&mut self, origin: Origin) {
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

    pub(super) fn set_live(
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

    pub(super) fn imprinted(
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

    pub(super) fn fine_tuned(
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
                let live = self.live.as_ref().and_then(|l| l.accuracy);
                let (wins, accuracy, needed) = fine_tune_wins(live, &ft);
                if wins {
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
}

/// Whether a fine-tune replaces the live head, with its held-out accuracy and the bar it had
/// to reach: the live head's held-out accuracy (`live`), or, for an imprinted head (which has
/// none), the imprint's accuracy on the fine-tune's own folds. A fine-tune without a held-out
/// estimate (too few samples) wins: nothing says it is worse.
pub fn fine_tune_wins(live: Option<f32>, ft: &FineTune) -> (bool, f32, f32) {
    let needed = live.or(ft.imprint_accuracy).unwrap_or(0.0);
    let accuracy = ft.holdout_accuracy.unwrap_or(1.0);
    (accuracy + 1e-6 >= needed, accuracy, needed)
}

pub(super) fn map_classes(head: &Head, classes: &[String]) -> Vec<Option<usize>> {
    head.classes
        .iter()
        .map(|hc| classes.iter().position(|c| c == hc))
        .collect()
}
