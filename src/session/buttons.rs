//! What the buttons mean: raw levels in, [`Action`]s out, time passed in.
//!
//! Button 0 is undo, on a hold only (a short tap destroys nothing); button k+1 captures the
//! k-th class of the current list on a press, and again on every repeat while it is held (a
//! burst). Every button goes through its own [`Debouncer`]. Must not: read a clock, or know
//! which backend the levels came from.

use super::{Action, ClassRef};
use crate::gpio::debounce::{Debouncer, Event, Timing};

/// The debouncers of a row of buttons and their meaning.
#[derive(Debug, Clone)]
pub struct ButtonPanel {
    debouncers: Vec<Debouncer>,
}

impl ButtonPanel {
    /// `buttons` buttons (undo + one per class) with `timing`.
    pub fn new(buttons: usize, timing: Timing) -> Self {
        ButtonPanel {
            debouncers: vec![Debouncer::new(timing); buttons],
        }
    }

    /// Feed raw levels sampled at `now_ms`; returns the actions they trigger.
    pub fn update(&mut self, now_ms: u64, levels: &[bool]) -> Vec<Action> {
        let mut out = Vec::new();
        for (b, (d, &level)) in self.debouncers.iter_mut().zip(levels).enumerate() {
            match (b, d.update(now_ms, level)) {
                (0, Some(Event::Hold)) => out.push(Action::Undo),
                (0, _) => {}
                (b, Some(Event::Press | Event::Repeat)) => {
                    out.push(Action::Capture(ClassRef::Index(b - 1)));
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timing {
        Timing {
            debounce_ms: 20,
            hold_ms: 500,
            repeat_ms: 200,
        }
    }

    #[test]
    fn class_buttons_capture_and_holding_button_zero_undoes() {
        let mut p = ButtonPanel::new(3, t());
        let mut actions = Vec::new();
        for ms in 0..2000u64 {
            let levels = [
                (1000..1700).contains(&ms),
                (100..200).contains(&ms),
                (300..400).contains(&ms),
            ];
            actions.extend(p.update(ms, &levels));
        }
        assert_eq!(
            actions,
            vec![
                Action::Capture(ClassRef::Index(0)),
                Action::Capture(ClassRef::Index(1)),
                Action::Undo
            ]
        );
    }

    #[test]
    fn a_short_tap_on_button_zero_destroys_nothing() {
        let mut p = ButtonPanel::new(2, t());
        let acts: Vec<Action> = (0..1000u64)
            .flat_map(|ms| p.update(ms, &[(100..250).contains(&ms), false]))
            .collect();
        assert!(acts.is_empty());
    }

    #[test]
    fn holding_a_class_button_captures_a_burst() {
        let mut p = ButtonPanel::new(2, t());
        // Held 1.2 s: the press, the hold at 500 ms (no capture), repeats at 700, 900, 1100.
        let acts: Vec<Action> = (0..2000u64)
            .flat_map(|ms| p.update(ms, &[false, (0..1200).contains(&ms)]))
            .collect();
        assert_eq!(acts.len(), 4, "{acts:?}");
        assert!(
            acts.iter()
                .all(|a| *a == Action::Capture(ClassRef::Index(0)))
        );
    }
}
