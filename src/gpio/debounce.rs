//! Button debouncing as a pure state machine: raw samples in, at most one event per physical
//! press out. Time is passed in (milliseconds from any fixed origin); nothing here reads a
//! clock or sleeps, so every behaviour is tested with explicit timestamps.
//!
//! Rules: a level change is accepted only after it has been stable for `debounce_ms`. An
//! accepted press emits [`Event::Press`] at once. If the button is then held for `hold_ms`,
//! [`Event::Hold`] is emitted once, followed by [`Event::Repeat`] every `repeat_ms` while it
//! stays down (for burst capture). Releases emit nothing. Bounces shorter than `debounce_ms`
//! never produce an event.

/// Timing of one button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A level must be stable this long to count.
    pub debounce_ms: u64,
    /// Held this long (after the accepted press) → [`Event::Hold`].
    pub hold_ms: u64,
    /// While held, [`Event::Repeat`] this often after the hold; 0 disables repeats.
    pub repeat_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        // 50 ms debounce is the usual figure for tactile switches; Coral's project used 100.
        Timing {
            debounce_ms: 50,
            hold_ms: 800,
            repeat_ms: 250,
        }
    }
}

/// What a button did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Accepted press (exactly one per physical press).
    Press,
    /// The press has lasted `hold_ms`.
    Hold,
    /// Still held: another `repeat_ms` has passed since the hold or the last repeat.
    Repeat,
}

/// Debouncer for one button.
#[derive(Debug, Clone)]
pub struct Debouncer {
    timing: Timing,
    stable: bool,
    candidate: bool,
    candidate_since: u64,
    pressed_at: Option<u64>,
    held: bool,
    last_repeat: u64,
}

impl Debouncer {
    /// A released button.
    pub fn new(timing: Timing) -> Self {
        Debouncer {
            timing,
            stable: false,
            candidate: false,
            candidate_since: 0,
            pressed_at: None,
            held: false,
            last_repeat: 0,
        }
    }

    /// Feed one raw sample (`true` = pressed) taken at `now_ms`; returns the event it causes.
    pub fn update(&mut self, now_ms: u64, pressed: bool) -> Option<Event> {
        if pressed != self.candidate {
            self.candidate = pressed;
            self.candidate_since = now_ms;
        }
        if self.candidate != self.stable
            && now_ms.saturating_sub(self.candidate_since) >= self.timing.debounce_ms
        {
            self.stable = self.candidate;
            if self.stable {
                self.pressed_at = Some(now_ms);
                self.held = false;
                return Some(Event::Press);
            }
            self.pressed_at = None;
            return None;
        }
        let t = self.pressed_at?;
        if !self.stable {
            return None;
        }
        if !self.held {
            if now_ms.saturating_sub(t) >= self.timing.hold_ms {
                self.held = true;
                self.last_repeat = now_ms;
                return Some(Event::Hold);
            }
        } else if self.timing.repeat_ms > 0
            && now_ms.saturating_sub(self.last_repeat) >= self.timing.repeat_ms
        {
            self.last_repeat = now_ms;
            return Some(Event::Repeat);
        }
        None
    }

    /// Whether the debounced level is "pressed".
    pub fn is_pressed(&self) -> bool {
        self.stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(samples: &[(u64, bool)]) -> Vec<(u64, Event)> {
        let mut d = Debouncer::new(Timing {
            debounce_ms: 20,
            hold_ms: 500,
            repeat_ms: 100,
        });
        samples
            .iter()
            .filter_map(|&(t, p)| d.update(t, p).map(|e| (t, e)))
            .collect()
    }

    /// Sample a level function every millisecond.
    fn sampled(until: u64, level: impl Fn(u64) -> bool) -> Vec<(u64, bool)> {
        (0..until).map(|t| (t, level(t))).collect()
    }

    #[test]
    fn a_bouncy_press_gives_exactly_one_event() {
        // Contact bounce for 8 ms on press and on release, held 200 ms in between.
        let s = sampled(400, |t| match t {
            0..100 => false,
            100..108 => t % 2 == 0,
            108..300 => true,
            300..308 => t % 2 == 1,
            _ => false,
        });
        assert_eq!(run(&s), vec![(128, Event::Press)]);
    }

    #[test]
    fn glitches_shorter_than_the_debounce_are_ignored() {
        let s = sampled(300, |t| (100..115).contains(&t));
        assert!(run(&s).is_empty());
    }

    #[test]
    fn holding_gives_hold_then_repeats_until_release() {
        let s = sampled(1200, |t| (100..1000).contains(&t));
        let ev = run(&s);
        assert_eq!(ev[0], (120, Event::Press));
        assert_eq!(ev[1], (620, Event::Hold));
        let repeats: Vec<u64> = ev[2..]
            .iter()
            .map(|&(t, e)| {
                assert_eq!(e, Event::Repeat);
                t
            })
            .collect();
        assert_eq!(repeats, vec![720, 820, 920]);
    }

    #[test]
    fn two_presses_two_events_even_with_sparse_sampling() {
        // Samples every 30 ms, as a slow polling loop would take them.
        let s: Vec<(u64, bool)> = (0..40)
            .map(|k| (k * 30, (5..10).contains(&k) || (20..25).contains(&k)))
            .collect();
        let ev: Vec<Event> = run(&s).into_iter().map(|(_, e)| e).collect();
        assert_eq!(ev, vec![Event::Press, Event::Press]);
    }
}
