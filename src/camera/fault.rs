//! A fault-injecting camera: wraps any [`FrameSource`] and makes it misbehave the ways real
//! cameras do, so the appliance's survival policy can be tested (smoltcp's
//! `phy::FaultInjector` is the model: an ordinary type, seeded, configured by numbers).
//!
//! Per delivered frame: dropped (`drop_pct`), torn (`torn_pct`: the pixel buffer is cut
//! short, which [`Frame::check`] detects) or scrambled (`noise_pct`: right size, random
//! pixels, which nothing can detect). Over time: error bursts (every poll fails for
//! `burst_ms`) and stalls (no frame at all for `stall_ms`, as a hung driver gives), each
//! starting after a random quiet interval around `every_ms`. Every burst and stall is logged
//! as a [`FaultWindow`] so a test can check recovery after each one.
//! Must not: sleep or read a clock (time is the `now_ms` passed to `poll`).

use super::{CameraError, FrameSource};
use crate::frame::Frame;
use crate::rng::Rng;

/// What to inject; percentages are per delivered frame, 0..=100.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seed of the fault sequence (same seed and polls, same faults).
    pub seed: u64,
    /// Frames silently dropped.
    pub drop_pct: u32,
    /// Frames delivered with a pixel buffer cut short.
    pub torn_pct: u32,
    /// Frames delivered with random pixels.
    pub noise_pct: u32,
    /// Mean quiet time between two timed faults (bursts or stalls), ms; 0 = none.
    pub every_ms: u64,
    /// Length of an error burst, ms.
    pub burst_ms: u64,
    /// Length of a stall, ms.
    pub stall_ms: u64,
}

impl Default for FaultConfig {
    /// Nothing injected.
    fn default() -> Self {
        FaultConfig {
            seed: 1,
            drop_pct: 0,
            torn_pct: 0,
            noise_pct: 0,
            every_ms: 0,
            burst_ms: 2000,
            stall_ms: 5000,
        }
    }
}

/// A timed fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Every poll returned an error.
    ErrorBurst,
    /// No frame arrived.
    Stall,
}

/// One timed fault that happened: `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultWindow {
    /// Which fault.
    pub kind: FaultKind,
    /// When it began.
    pub start_ms: u64,
    /// When it ended (or will end).
    pub end_ms: u64,
}

/// Counts of what was injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Frames passed through unchanged.
    pub passed: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames torn.
    pub torn: u64,
    /// Frames scrambled.
    pub noised: u64,
    /// Polls answered with an error.
    pub errors: u64,
}

/// A [`FrameSource`] that injects faults into another.
pub struct FaultInjector<S> {
    inner: S,
    cfg: FaultConfig,
    rng: Rng,
    next_fault_ms: Option<u64>,
    windows: Vec<FaultWindow>,
    counts: FaultCounts,
}

impl<S: FrameSource> FaultInjector<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, cfg: FaultConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let next_fault_ms = (cfg.every_ms > 0).then(|| quiet(&mut rng, cfg.every_ms));
        FaultInjector {
            inner,
            cfg,
            rng,
            next_fault_ms,
            windows: Vec::new(),
            counts: FaultCounts::default(),
        }
    }

    /// Every timed fault so far (the last may still be running).
    pub fn windows(&self) -> &[FaultWindow] {
        &self.windows
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.counts
    }

    /// The timed fault active at `now_ms`, starting a new one when it is due.
    fn timed_fault(&mut self, now_ms: u64) -> Option<FaultKind> {
        if let Some(w) = self.windows.last()
            && now_ms < w.end_ms
        {
            return Some(w.kind);
        }
        self.next_fault_ms.filter(|&t| now_ms >= t)?;
        let (kind, len) = if self.rng.below(2) == 0 {
            (FaultKind::ErrorBurst, self.cfg.burst_ms)
        } else {
            (FaultKind::Stall, self.cfg.stall_ms)
        };
        let end_ms = now_ms + len;
        self.windows.push(FaultWindow {
            kind,
            start_ms: now_ms,
            end_ms,
        });
        self.next_fault_ms = Some(end_ms + quiet(&mut self.rng, self.cfg.every_ms));
        Some(kind)
    }

    fn chance(&mut self, pct: u32) -> bool {
        pct > 0 && (self.rng.below(100) as u32) < pct
    }
}

/// A quiet interval: uniform in [every/2, 3·every/2).
fn quiet(rng: &mut Rng, every_ms: u64) -> u64 {
    every_ms / 2 + rng.below(every_ms.max(1) as usize) as u64
}

impl<S: FrameSource> FrameSource for FaultInjector<S> {
    fn describe(&self) -> String {
        format!("{} with injected faults", self.inner.describe())
    }

    fn poll(&mut self, now_ms: u64) -> Result<Option<Frame>, CameraError> {
        match self.timed_fault(now_ms) {
            Some(FaultKind::ErrorBurst) => {
                self.counts.errors += 1;
                return Err(CameraError::Read {
                    source_name: self.describe(),
                    message: "injected error".into(),
                });
            }
            // A stalled camera delivers nothing, and its frames are lost.
            Some(FaultKind::Stall) => {
                let _ = self.inner.poll(now_ms);
                return Ok(None);
            }
            None => {}
        }
        let Some(mut frame) = self.inner.poll(now_ms)? else {
            return Ok(None);
        };
        if self.chance(self.cfg.drop_pct) {
            self.counts.dropped += 1;
            return Ok(None);
        }
        if self.chance(self.cfg.torn_pct) {
            self.counts.torn += 1;
            frame.rgb.truncate(frame.rgb.len() / 2);
        } else if self.chance(self.cfg.noise_pct) {
            self.counts.noised += 1;
            for v in frame.rgb.iter_mut() {
                *v = self.rng.below(256) as u8;
            }
        } else {
            self.counts.passed += 1;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::Synthetic;

    fn run(cfg: FaultConfig, until_ms: u64) -> (FaultInjector<Synthetic>, Vec<&'static str>) {
        let mut cam = FaultInjector::new(Synthetic::new(100, 1000), cfg);
        let mut seen = Vec::new();
        for t in (0..until_ms).step_by(10) {
            seen.push(match cam.poll(t) {
                Ok(Some(f)) if f.check().is_ok() => "frame",
                Ok(Some(_)) => "torn",
                Ok(None) => "none",
                Err(_) => "error",
            });
        }
        (cam, seen)
    }

    #[test]
    fn nothing_configured_nothing_injected() {
        let (cam, seen) = run(FaultConfig::default(), 10_000);
        assert_eq!(seen.iter().filter(|s| **s == "frame").count(), 100);
        assert!(cam.windows().is_empty());
        assert_eq!(cam.counts().passed, 100);
    }

    #[test]
    fn per_frame_faults_follow_their_rates_and_the_seed() {
        let cfg = FaultConfig {
            seed: 7,
            drop_pct: 20,
            torn_pct: 10,
            noise_pct: 10,
            ..FaultConfig::default()
        };
        let (a, seen) = run(cfg.clone(), 100_000);
        let c = a.counts();
        assert_eq!(c.passed + c.dropped + c.torn + c.noised, 1000);
        assert!((150..250).contains(&c.dropped), "{c:?}");
        assert!((50..120).contains(&c.torn), "{c:?}");
        assert_eq!(seen.iter().filter(|s| **s == "torn").count() as u64, c.torn);
        let (b, _) = run(cfg, 100_000);
        assert_eq!(b.counts(), c, "same seed, same faults");
    }

    #[test]
    fn bursts_and_stalls_happen_in_logged_windows() {
        let cfg = FaultConfig {
            seed: 3,
            every_ms: 4000,
            burst_ms: 1000,
            stall_ms: 2000,
            ..FaultConfig::default()
        };
        let (cam, seen) = run(cfg, 60_000);
        let w = cam.windows();
        assert!(w.len() >= 8, "{w:?}");
        assert!(w.iter().any(|w| w.kind == FaultKind::ErrorBurst));
        assert!(w.iter().any(|w| w.kind == FaultKind::Stall));
        for (i, s) in seen.iter().enumerate() {
            let t = i as u64 * 10;
            let inside = w.iter().find(|w| (w.start_ms..w.end_ms).contains(&t));
            match inside.map(|w| w.kind) {
                Some(FaultKind::ErrorBurst) => assert_eq!(*s, "error", "at {t}"),
                Some(FaultKind::Stall) => assert_eq!(*s, "none", "at {t}"),
                None => assert_ne!(*s, "error", "at {t}"),
            }
        }
        // Windows never overlap and leave quiet time between them.
        for p in w.windows(2) {
            assert!(p[1].start_ms >= p[0].end_ms + 2000, "{p:?}");
        }
    }
}
