//! `teachcam run`: the appliance loop. Classifies the live stream, captures labelled samples
//! when a button is pressed, fine-tunes the head in a background thread and swaps it in
//! without pausing inference, and keeps everything in the crash-safe [`crate::store`].
//!
//! The decision logic ([`Controller`]) is pure: button levels and predictions in, actions and
//! display changes out, time passed in. [`run`] is the thin shell that owns the camera,
//! backbone, store and trainer thread and feeds the controller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use heapless::HistoryBuffer;
use serde_json::json;

use crate::backbone::Backbone;
use crate::camera::FrameSource;
use crate::gpio::debounce::{Debouncer, Event, Timing};
use crate::gpio::{Buttons, Indicator};
use crate::head::Head;
use crate::head::train::{Examples, TrainConfig, TrainReport, imprint_head, train};
use crate::store::Store;

/// Default number of frames the top class is voted over.
pub const SMOOTHING: usize = 5;
use crate::config::MAX_SMOOTHING;

/// What a button press asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Store the current frame as an example of class `k`.
    Capture(usize),
    /// Remove the newest stored example.
    Undo,
}

/// Pure decision logic: debouncing, button meaning, smoothing, "unknown".
#[derive(Debug)]
pub struct Controller {
    debouncers: Vec<Debouncer>,
    votes: HistoryBuffer<Option<usize>, MAX_SMOOTHING>,
    window: usize,
    shown: Option<Option<usize>>,
}

impl Controller {
    /// Button 0 is undo (hold it), buttons 1..=classes capture class 0..classes-1.
    pub fn new(buttons: usize, timing: Timing) -> Self {
        Self::with_smoothing(buttons, timing, SMOOTHING)
    }

    /// As [`Controller::new`], voting over the last `window` frames (1..=[`MAX_SMOOTHING`]).
    pub fn with_smoothing(buttons: usize, timing: Timing, window: usize) -> Self {
        Controller {
            debouncers: vec![Debouncer::new(timing); buttons],
            votes: HistoryBuffer::new(),
            window: window.clamp(1, MAX_SMOOTHING),
            shown: None,
        }
    }

    /// Feed raw button levels; returns the actions they trigger.
    pub fn buttons(&mut self, now_ms: u64, levels: &[bool]) -> Vec<Action> {
        let mut out = Vec::new();
        for (b, (d, &level)) in self.debouncers.iter_mut().zip(levels).enumerate() {
            match (b, d.update(now_ms, level)) {
                (0, Some(Event::Hold)) => out.push(Action::Undo),
                (0, _) => {}
                (b, Some(Event::Press | Event::Repeat)) => out.push(Action::Capture(b - 1)),
                _ => {}
            }
        }
        out
    }

    /// Feed one frame's decision (`None` = unknown); returns the class to show when the
    /// smoothed decision changes (majority over the last `window` frames).
    pub fn prediction(&mut self, class: Option<usize>) -> Option<Option<usize>> {
        self.votes.write(class);
        let skip = self.votes.len().saturating_sub(self.window);
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
        if best.1 * 2 <= recent.len() {
            return None;
        }
        let decided = best.0;
        if self.shown != Some(decided) {
            self.shown = Some(decided);
            Some(decided)
        } else {
            None
        }
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Class names (button k+1 captures class k).
    pub classes: Vec<String>,
    /// Stop after this long (for demos and tests); `None` = until SIGTERM/SIGINT.
    pub duration: Option<Duration>,
    /// Fine-tuning time budget.
    pub train_budget: Duration,
    /// Where to write the status JSON (atomically, about once a second).
    pub status: Option<std::path::PathBuf>,
    /// Button timing.
    pub timing: Timing,
    /// Confidence threshold for "unknown".
    pub threshold: f32,
    /// Frames the displayed class is voted over.
    pub smoothing: usize,
}

/// Time spent per stage of the frame loop.
#[derive(Debug, Default, Clone, Copy)]
struct Stages {
    /// Getting the frame (camera poll, including JPEG decoding).
    decode: Duration,
    /// Frame to model input.
    preprocess: Duration,
    /// The backbone.
    backbone: Duration,
    /// Head and smoothing.
    head: Duration,
}

impl Stages {
    fn json(&self, frames: u64) -> serde_json::Value {
        let total = (self.decode + self.preprocess + self.backbone + self.head).as_secs_f64();
        let one = |d: Duration| {
            json!({
                "ms_per_frame": d.as_secs_f64() * 1e3 / frames.max(1) as f64,
                "share": if total > 0.0 { d.as_secs_f64() / total } else { 0.0 },
            })
        };
        json!({
            "decode": one(self.decode),
            "preprocess": one(self.preprocess),
            "backbone": one(self.backbone),
            "head": one(self.head),
        })
    }

    fn line(&self, frames: u64) -> String {
        let total = (self.decode + self.preprocess + self.backbone + self.head).as_secs_f64();
        let part = |name: &str, d: Duration| {
            format!(
                "{name} {:.1} ms ({:.0} %)",
                d.as_secs_f64() * 1e3 / frames.max(1) as f64,
                if total > 0.0 {
                    100.0 * d.as_secs_f64() / total
                } else {
                    0.0
                }
            )
        };
        format!(
            "{}, {}, {}, {}",
            part("decode", self.decode),
            part("preprocess", self.preprocess),
            part("backbone", self.backbone),
            part("head", self.head)
        )
    }
}

struct Job {
    generation: u64,
    data: Vec<f32>,
    labels: Vec<usize>,
    classes: Vec<String>,
}

/// The embeddings and labels of all stored samples, restricted to classes that have some.
fn training_set(store: &Store, classes: &[String]) -> (Vec<f32>, Vec<usize>, Vec<String>) {
    let present: Vec<String> = classes
        .iter()
        .filter(|c| store.samples().iter().any(|s| &s.label == *c))
        .cloned()
        .collect();
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for s in store.samples() {
        if let Some(k) = present.iter().position(|c| *c == s.label) {
            data.extend_from_slice(&s.embedding);
            labels.push(k);
        }
    }
    (data, labels, present)
}

/// A head imprinted from everything stored, with the fine-tune job for the same samples
/// (generation left at 0 for the caller to set); `None` when nothing usable is stored.
fn imprint_from_store(
    store: &Store,
    classes: &[String],
    dim: usize,
    sha: &str,
    precision: &str,
    threshold: f32,
) -> Option<(Head, Job)> {
    let (data, labels, present) = training_set(store, classes);
    let head = imprint_head(
        Examples {
            dim,
            data: &data,
            labels: &labels,
        },
        present.clone(),
        sha,
        precision,
        threshold,
    )
    .ok()?;
    let job = Job {
        generation: 0,
        data,
        labels,
        classes: present,
    };
    Some((head, job))
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Run the appliance loop until the duration passes or SIGTERM/SIGINT arrives.
pub fn run(
    settings: &Settings,
    backbone: &Backbone,
    store: &mut Store,
    camera: &mut dyn FrameSource,
    buttons: &mut dyn Buttons,
    indicator: &mut dyn Indicator,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    let classes = &settings.classes;
    let mut ctl =
        Controller::with_smoothing(classes.len() + 1, settings.timing, settings.smoothing);
    let mut emb = backbone.embedder();
    let dim = backbone.dim();
    let precision = backbone
        .precision()
        .map_or("custom", |p| p.name())
        .to_string();
    let sha = backbone.sha256().to_string();
    store.set_backbone(&sha);
    // Samples embedded by another backbone (the precision was changed) are re-embedded from
    // their thumbnails, so what was taught is kept across a model change.
    let stale: Vec<u64> = store
        .samples()
        .iter()
        .filter(|s| !s.backbone.is_empty() && s.backbone != sha)
        .map(|s| s.id)
        .collect();
    if !stale.is_empty() {
        log::warn!(
            "{} samples were embedded by another backbone; re-embedding them with {}",
            stale.len(),
            backbone.path().display()
        );
        for id in stale {
            match store
                .thumbnail(id)
                .map_err(anyhow::Error::msg)
                .and_then(|j| crate::dataset::embed_jpeg(&mut emb, &j))
            {
                Ok(e) => store.replace_embedding(id, &e)?,
                Err(e) => log::error!("sample {id} kept as it was: {e}"),
            }
        }
    }

    // The head: the stored one if it fits this backbone, else imprinted from the samples.
    let mut head: Option<Head> = store
        .load_head()
        .filter(|h| h.backbone_sha256 == sha && h.dim == dim);
    let mut generation = 0u64;
    if head.is_none() {
        head = imprint_from_store(store, classes, dim, &sha, &precision, settings.threshold)
            .map(|(h, ..)| h);
    }

    // Background fine-tuning: jobs in, heads out. Inference never waits for it.
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let (head_tx, head_rx) = mpsc::channel::<(u64, Head, TrainReport)>();
    let budget = settings.train_budget;
    let (sha_t, prec_t, threshold) = (sha.clone(), precision.clone(), settings.threshold);
    let trainer = std::thread::spawn(move || {
        while let Ok(mut job) = job_rx.recv() {
            // Only the newest request matters.
            while let Ok(newer) = job_rx.try_recv() {
                job = newer;
            }
            let cfg = TrainConfig {
                deadline: Some(Instant::now() + budget),
                threshold,
                ..TrainConfig::default()
            };
            let ex = Examples {
                dim: job.data.len() / job.labels.len().max(1),
                data: &job.data,
                labels: &job.labels,
            };
            match train(ex, None, job.classes, &sha_t, &prec_t, &cfg) {
                Ok((h, r)) => {
                    if head_tx.send((job.generation, h, r)).is_err() {
                        break;
                    }
                }
                Err(e) => log::warn!("fine-tuning skipped: {e}"),
            }
        }
    });

    // systemd: readiness now that the model is loaded and the store is open; watchdog pings
    // come from the processing loop itself, so a hung loop gets the service restarted.
    // Both are no-ops outside systemd (no NOTIFY_SOCKET).
    let watchdog = watchdog_interval();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut last_ping = Instant::now();

    let start = Instant::now();
    // Buttons are sampled on their own thread every few milliseconds, so a press is seen
    // however long one inference takes; actions arrive over a channel.
    let (act_tx, act_rx) = mpsc::channel::<(Action, Instant)>();
    let timing = settings.timing;
    let nbuttons = classes.len() + 1;
    let stop_b = Arc::clone(&stop);
    let frames = std::thread::scope(|scope| -> anyhow::Result<u64> {
        scope.spawn(move || {
            let mut logic = Controller::new(nbuttons, timing);
            while !stop_b.load(Ordering::Relaxed) {
                let now_ms = start.elapsed().as_millis() as u64;
                match buttons.read(now_ms) {
                    Ok(levels) => {
                        for a in logic.buttons(now_ms, &levels) {
                            if act_tx.send((a, Instant::now())).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => log::warn!("{e}"),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // However the loop ends (stop, duration, error), the button thread is told to stop,
        // so the scope can join it.
        let _stop_buttons = StopOnDrop(&stop);
        let mut last_embedding: Option<Vec<f32>> = None;
        // The newest frame, and its thumbnail once a capture needed it (encoded at most once
        // per frame, and only when a button asks: not on every frame).
        let mut last_frame: Option<crate::camera::Frame> = None;
        let mut last_thumb: Option<Vec<u8>> = None;
        let mut frames = 0u64;
        let mut fps_window = (Instant::now(), 0u64);
        let mut fps = 0.0;
        let mut last_status = Instant::now() - Duration::from_secs(10);
        let mut shown: Option<usize> = None;
        let mut confidence = 0.0f32;
        let mut head_version = 0u64;
        let mut stages = Stages::default();
        // When the newest batch of presses happened, until its fine-tuned head is live.
        let mut pressed_at: Option<Instant> = None;
        println!(
            "teachcam: running with {} classes ({}), {} stored samples",
            classes.len(),
            classes.join(", "),
            store.samples().len()
        );
        while !stop.load(Ordering::Relaxed) {
            let now = start.elapsed();
            if settings.duration.is_some_and(|d| now >= d) {
                break;
            }
            let now_ms = now.as_millis() as u64;
            let mut busy = false;

            // 1. A new frame: embed, classify, smooth, show.
            let t0 = Instant::now();
            let polled = camera.poll(now_ms);
            match polled {
                Ok(Some(frame)) => {
                    busy = true;
                    let t1 = Instant::now();
                    stages.decode += t1 - t0;
                    emb.preprocess(&frame.rgb, frame.width, frame.height);
                    let t2 = Instant::now();
                    stages.preprocess += t2 - t1;
                    let e = emb.run()?;
                    let t3 = Instant::now();
                    stages.backbone += t3 - t2;
                    if let Some(h) = &head {
                        let p = h.predict(&e);
                        let class = p
                            .known
                            .then(|| classes.iter().position(|c| *c == h.classes[p.best]))
                            .flatten();
                        confidence = p.confidence;
                        if let Some(change) = ctl.prediction(class) {
                            shown = change;
                            indicator.show(change);
                            let name = change.map_or(crate::head::UNKNOWN, |k| classes[k].as_str());
                            println!("class: {name} ({confidence:.2}) [{}]", frame.tag);
                        }
                    }
                    stages.head += t3.elapsed();
                    last_frame = Some(frame);
                    last_thumb = None;
                    last_embedding = Some(e);
                    frames += 1;
                    fps_window.1 += 1;
                }
                Ok(None) => {}
                Err(e) => log::warn!("{e}"),
            }

            // 2. Button actions from the button thread.
            // Several actions may arrive together (a burst): apply them all, then re-imprint
            // once from everything stored (usable at once) and queue one fine-tune.
            let mut changed = false;
            let mut first_press: Option<Instant> = None;
            while let Ok((action, at)) = act_rx.try_recv() {
                first_press.get_or_insert(at);
                match action {
                    Action::Capture(k) if k < classes.len() => {
                        let (Some(e), Some(f)) = (&last_embedding, &last_frame) else {
                            continue;
                        };
                        let t = last_thumb.get_or_insert_with(|| thumbnail(f));
                        let id = store.add(&classes[k], e, t, now_unix_ms())?;
                        println!("captured id={id} class={}", classes[k]);
                        changed = true;
                    }
                    Action::Capture(_) => {}
                    Action::Undo => match store.remove_last()? {
                        Some(s) => {
                            println!("undo id={} class={}", s.id, s.label);
                            changed = true;
                        }
                        None => println!("undo: nothing stored"),
                    },
                }
            }
            if changed {
                generation += 1;
                head = None;
                if let Some((h, mut job)) =
                    imprint_from_store(store, classes, dim, &sha, &precision, settings.threshold)
                {
                    // Persist at once: after a restart the class is still known, even if
                    // the fine-tune never finished. The previous head is kept beside it.
                    store.save_head(&h)?;
                    head = Some(h);
                    if let Some(at) = first_press {
                        println!(
                            "learned: imprinted head live {:.0} ms after the press ({} samples)",
                            at.elapsed().as_secs_f64() * 1e3,
                            store.samples().len()
                        );
                        pressed_at = Some(at);
                    }
                    job.generation = generation;
                    let _ = job_tx.send(job);
                }
            }

            // 3. A fine-tuned head: swap in only if it is for the current samples and no worse.
            while let Ok((g, h, r)) = head_rx.try_recv() {
                if g != generation {
                    continue;
                }
                let current = head
                    .as_ref()
                    .and_then(|h| h.info.holdout_accuracy)
                    .unwrap_or(0.0);
                let new = r.holdout_accuracy.unwrap_or(1.0);
                if new + 1e-6 >= current {
                    store.save_head(&h)?;
                    head_version += 1;
                    println!(
                        "head: fine-tuned v{head_version} on {} samples, held-out accuracy {}, live {:.0} ms after the press",
                        h.info.samples_per_class.iter().sum::<usize>(),
                        r.holdout_accuracy
                            .map_or("n/a".into(), |a| format!("{a:.3}")),
                        pressed_at
                            .take()
                            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3)
                    );
                    head = Some(h);
                } else {
                    log::info!(
                        "fine-tuned head kept out: held-out accuracy {new:.3} < {current:.3}"
                    );
                }
            }

            // 4. Watchdog and status.
            if let Some(every) = watchdog
                && last_ping.elapsed() >= every
            {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                last_ping = Instant::now();
            }
            if fps_window.0.elapsed() >= Duration::from_secs(1) {
                fps = fps_window.1 as f64 / fps_window.0.elapsed().as_secs_f64();
                fps_window = (Instant::now(), 0);
            }
            if let Some(path) = &settings.status
                && last_status.elapsed() >= Duration::from_secs(1)
            {
                last_status = Instant::now();
                let v = json!({
                    "class": shown.map_or(crate::head::UNKNOWN, |k| classes[k].as_str()),
                    "confidence": confidence,
                    "fps": fps,
                    "frames": frames,
                    "samples_per_class": classes.iter().zip(store.counts(classes)).map(|(c, n)| (c.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                    "head_version": head_version,
                    "uptime_s": now.as_secs(),
                    "stages": stages.json(frames),
                });
                if let Err(e) = crate::fsutil::atomic_write(path, v.to_string().as_bytes()) {
                    log::warn!("cannot write status {}: {e}", path.display());
                }
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Stops the button thread too.
        stop.store(true, Ordering::Relaxed);
        if frames > 0 {
            println!("teachcam: per frame: {}", stages.line(frames));
        }
        Ok(frames)
    })?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    drop(job_tx);
    let _ = trainer.join();
    println!(
        "teachcam: stopped after {frames} frames; {} samples stored",
        store.samples().len()
    );
    Ok(())
}

/// Half the watchdog period systemd asked for (`WATCHDOG_USEC`, for this process when
/// `WATCHDOG_PID` is set), or `None` without a watchdog.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A small JPEG of the frame kept with each capture.
fn thumbnail(frame: &crate::camera::Frame) -> Vec<u8> {
    image::RgbImage::from_raw(frame.width as u32, frame.height as u32, frame.rgb.clone())
        .and_then(|img| crate::camera::thumbnail_jpeg(&img).ok())
        .unwrap_or_default()
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
        let mut c = Controller::new(3, t());
        let mut actions = Vec::new();
        for ms in 0..2000u64 {
            let levels = [
                (1000..1700).contains(&ms),
                (100..200).contains(&ms),
                (300..400).contains(&ms),
            ];
            actions.extend(c.buttons(ms, &levels));
        }
        assert_eq!(
            actions,
            vec![Action::Capture(0), Action::Capture(1), Action::Undo]
        );
    }

    #[test]
    fn a_short_tap_on_button_zero_destroys_nothing() {
        let mut c = Controller::new(2, t());
        let acts: Vec<Action> = (0..1000u64)
            .flat_map(|ms| c.buttons(ms, &[(100..250).contains(&ms), false]))
            .collect();
        assert!(acts.is_empty());
    }

    #[test]
    fn the_smoothing_window_is_configurable() {
        // Window 1: every frame decides; window 3: two of the last three.
        let mut c = Controller::with_smoothing(1, t(), 1);
        assert_eq!(c.prediction(Some(1)), Some(Some(1)));
        assert_eq!(c.prediction(Some(2)), Some(Some(2)));
        let mut c = Controller::with_smoothing(1, t(), 3);
        for _ in 0..10 {
            c.prediction(Some(1));
        }
        assert_eq!(c.prediction(Some(2)), None);
        assert_eq!(
            c.prediction(Some(2)),
            Some(Some(2)),
            "old votes beyond the window do not count"
        );
    }

    #[test]
    fn smoothing_needs_a_majority_and_reports_only_changes() {
        let mut c = Controller::new(1, t());
        assert_eq!(c.prediction(Some(1)), Some(Some(1)));
        assert_eq!(c.prediction(Some(1)), None);
        assert_eq!(
            c.prediction(Some(2)),
            None,
            "one odd frame does not flip the display"
        );
        assert_eq!(c.prediction(Some(2)), None);
        assert_eq!(c.prediction(Some(2)), Some(Some(2)));
        assert_eq!(c.prediction(None), None);
    }
}
