//! What `teachcam run` prints about each event: one line on stdout per state change (the
//! format tests, `make run` and `bench/daemon_bench.py` read), warnings on stderr.
//!
//! Must not: print anything itself (the shell writes the lines).

use crate::frame::UNKNOWN;
use crate::session::{Event, FineTuneResult, HeadKind};

/// A line and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// stdout.
    Out(String),
    /// The log, as a warning.
    Warn(String),
}

/// The line for `event`, if it gets one.
pub fn line(event: &Event) -> Option<Line> {
    use Line::{Out, Warn};
    Some(match event {
        Event::ClassShown {
            class,
            confidence,
            tag,
        } => Out(format!(
            "class: {} ({confidence:.2}) [{tag}]",
            class.as_deref().unwrap_or(UNKNOWN)
        )),
        Event::CaptureSaved { sample, .. } => {
            Out(format!("captured id={} class={}", sample.id, sample.label))
        }
        Event::CaptureRefused { class, reason, .. } => {
            Out(format!("capture refused: class={class}: {reason}"))
        }
        // A burst's press is undone whole: `samples=N` says how many went.
        Event::Undone { sample, ids, .. } if ids.len() > 1 => Out(format!(
            "undo id={} class={} samples={}",
            sample.id,
            sample.label,
            ids.len()
        )),
        Event::Undone { sample, .. } => {
            Out(format!("undo id={} class={}", sample.id, sample.label))
        }
        Event::NothingToUndo { .. } => Out("undo: nothing stored".into()),
        Event::SamplesDeleted { ids, .. } => Out(format!("deleted {} samples", ids.len())),
        Event::Imported {
            samples,
            classes_added,
            ..
        } => Out(if classes_added.is_empty() {
            format!("imported {samples} samples")
        } else {
            format!(
                "imported {samples} samples; new classes: {}",
                classes_added.join(", ")
            )
        }),
        Event::SamplesRelabelled { ids, to, .. } => {
            Out(format!("relabelled {} samples as {to}", ids.len()))
        }
        Event::ClassAdded { name, .. } => Out(format!("class added: {name}")),
        Event::ClassRenamed { from, to, .. } => Out(format!("class renamed: {from} -> {to}")),
        Event::ClassRemoved { name, samples, .. } => {
            Out(format!("class removed: {name} ({samples} samples deleted)"))
        }
        Event::ActionRefused { reason, .. } => Out(format!("refused: {reason}")),
        Event::HeadSwapped {
            version,
            kind,
            samples,
            holdout_accuracy,
            after_action_ms,
        } => match (kind, after_action_ms) {
            (HeadKind::Imprinted, Some(ms)) => Out(format!(
                "learned: imprinted head live {ms} ms after the press ({samples} samples)"
            )),
            (HeadKind::Imprinted | HeadKind::Loaded, _) => {
                Out(format!("learned: imprinted head from {samples} samples"))
            }
            (HeadKind::FineTuned, after) => {
                let acc = holdout_accuracy.map_or("n/a".into(), |a| format!("{a:.3}"));
                let line = format!(
                    "head: fine-tuned v{version} on {samples} samples, held-out accuracy {acc}"
                );
                // "live N ms after the press" only when a press caused it (scripts time it).
                Out(match after {
                    Some(ms) => format!("{line}, live {ms} ms after the press"),
                    None => line,
                })
            }
        },
        Event::HeadCleared => Out("head: no samples left; every frame is unknown".into()),
        Event::FineTuneFinished { result, .. } => match result {
            FineTuneResult::KeptOut { accuracy, needed } => Out(format!(
                "head: fine-tuned head kept out: held-out accuracy {accuracy:.3} < {needed:.3}"
            )),
            FineTuneResult::Failed { message } => Warn(format!("fine-tune failed: {message}")),
            FineTuneResult::Swapped { .. } | FineTuneResult::Stale => return None,
        },
        Event::CameraLost { silent_ms } => Warn(format!(
            "camera: no usable frame for {:.1} s; still trying",
            *silent_ms as f64 / 1e3
        )),
        Event::CameraBack { after_ms } => Out(format!(
            "camera: back after {:.1} s",
            *after_ms as f64 / 1e3
        )),
        Event::Fault {
            kind,
            message,
            count,
        } => Warn(format!(
            "{kind:?} fault: {message} ({count} since the last report; running on)"
        )),
        Event::FineTuneStarted { .. } | Event::Status(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Origin, Refusal, Source};
    use crate::store::SampleInfo;

    #[test]
    fn the_lines_scripts_read_keep_their_format() {
        let origin = Origin {
            source: Source::Button,
            request: None,
            at_ms: 0,
        };
        let sample = SampleInfo {
            id: 12,
            label: "cup".into(),
            time_ms: 0,
            thumb_sha256: String::new(),
            press: 12,
        };
        let out = |e: Event| match line(&e) {
            Some(Line::Out(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            out(Event::CaptureSaved {
                sample: sample.clone(),
                origin
            }),
            "captured id=12 class=cup"
        );
        assert_eq!(
            out(Event::Undone {
                sample: sample.clone(),
                ids: vec![12],
                origin
            }),
            "undo id=12 class=cup"
        );
        assert_eq!(
            out(Event::Undone {
                sample,
                ids: vec![8, 9, 10, 11, 12],
                origin
            }),
            "undo id=12 class=cup samples=5"
        );
        let imprinted = out(Event::HeadSwapped {
            version: 2,
            kind: HeadKind::Imprinted,
            samples: 30,
            holdout_accuracy: None,
            after_action_ms: Some(9),
        });
        assert_eq!(
            imprinted,
            "learned: imprinted head live 9 ms after the press (30 samples)"
        );
        let tuned = out(Event::HeadSwapped {
            version: 3,
            kind: HeadKind::FineTuned,
            samples: 30,
            holdout_accuracy: Some(0.9),
            after_action_ms: Some(180),
        });
        assert_eq!(
            tuned,
            "head: fine-tuned v3 on 30 samples, held-out accuracy 0.900, live 180 ms after the press"
        );
        let at_start = out(Event::HeadSwapped {
            version: 1,
            kind: HeadKind::FineTuned,
            samples: 30,
            holdout_accuracy: None,
            after_action_ms: None,
        });
        assert_eq!(
            at_start,
            "head: fine-tuned v1 on 30 samples, held-out accuracy n/a"
        );
        assert_eq!(
            out(Event::ClassShown {
                class: None,
                confidence: 0.42,
                tag: "ring".into()
            }),
            "class: unknown (0.42) [ring]"
        );
        assert!(
            out(Event::CaptureRefused {
                class: "cup".into(),
                reason: Refusal::DiskFull,
                origin
            })
            .contains("disk is full")
        );
        assert_eq!(
            line(&Event::FineTuneStarted {
                generation: 1,
                samples: 2
            }),
            None
        );
    }
}
