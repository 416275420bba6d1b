//! `teachcam run`: the thin shell around the pure appliance core ([`crate::session`]).
//!
//! The shell is the only place that knows threads, signals and the clock. Each [`Shell::poll`]
//! reads the clock, takes the actions that arrived (buttons, and observers through
//! [`observe::Hub`]), takes finished fine-tunes, polls the camera, embeds a frame, feeds all of
//! that to [`Session::step`], carries out the effects (indicator, store, imprint, fine-tune
//! queue, events) and returns when to poll again. [`run`] adds the process around it:
//! signals, systemd readiness, the button thread, the status writer, the trainer thread.
//!
//! Failures inside the loop are survived: a camera, frame, backbone or store error becomes an
//! input of the core (counted, reported, an alert on the LEDs); only start-up failures are
//! errors of [`run`]. The camera, embedder, store, trainer and clock are traits, so the same
//! shell runs under a simulated clock with injected faults (`sim.rs`).
//! Must not: decide anything the core decides (what a press means, when to learn, whether a
//! head is used).

pub mod console;
pub mod observe;
#[cfg(test)]
mod sim;
pub mod status;
pub mod trainer;

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use crate::backbone::{Backbone, BackboneId, Embedder, FeatureMap};
use crate::camera::FrameSource;
use crate::frame::Frame;
use crate::gpio::debounce::Timing;
use crate::gpio::{Buttons, Indicator};
use crate::head::Head;
use crate::inspect::explain::Explainer;
use crate::session::buttons::ButtonPanel;
use crate::session::{
    Effect, Event, Fault, FrameReport, Guess, Input, Origin, Refusal, Session, SessionConfig,
    Source, Stages, StoreRequest, resolve_classes,
};
use crate::store::{Batch, Cause, Edit, Sample, SampleInfo, Store, StoreError};
use observe::{Command, HeatMap, Hub, SampleList};
use trainer::{Job, ThreadTrainer, Trainer};

/// How long the loop sleeps at most when the camera has no frame, ms.
pub const CAMERA_POLL_MS: u64 = 5;
/// How often the button thread samples the buttons, ms.
pub const BUTTON_POLL_MS: u64 = 5;

/// Why the appliance could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT/SIGHUP handlers: {0}")]
    Signals(std::io::Error),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Configured class names (they seed the state directory's list; see
    /// [`resolve_classes`]).
    pub classes: Vec<String>,
    /// Buttons wired: undo + one per configured class.
    pub buttons: usize,
    /// What the buttons are (GPIO, keyboard, script), for the events.
    pub source: Source,
    /// Stop after this long (for demos and tests); `None` = until SIGTERM/SIGINT.
    pub duration: Option<Duration>,
    /// Fine-tuning time budget.
    pub train_budget: Duration,
    /// Where to write the status JSON (atomically, about once a second).
    pub status: Option<PathBuf>,
    /// Button timing.
    pub timing: Timing,
    /// Confidence threshold for "unknown".
    pub threshold: f32,
    /// The core's knobs.
    pub session: SessionConfig,
    /// Most frames the inbox of unsure frames keeps (0: no inbox).
    pub inbox: usize,
}

/// Milliseconds since the loop started, and wall time for capture records.
pub trait Clock {
    /// Monotonic milliseconds since start.
    fn now_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch (0 if the clock is before 1970).
    fn unix_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    start: Instant,
}

impl MonoClock {
    /// Time starts now.
    pub fn new() -> Self {
        MonoClock {
            start: Instant::now(),
        }
    }
}

impl Default for MonoClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonoClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Frames to embeddings (the backbone, or a fake in simulations).
pub trait Embed {
    /// Prepare `frame` as the model's input.
    fn preprocess(&mut self, frame: &Frame);
    /// Run the model on the prepared input.
    fn run(&mut self) -> Result<Vec<f32>, String>;
    /// [`Embed::run`], with the last feature map when the model can return it.
    fn run_with_map(&mut self) -> Result<(Vec<f32>, Option<FeatureMap>), String> {
        self.run().map(|e| (e, None))
    }
}

impl Embed for Embedder {
    fn preprocess(&mut self, frame: &Frame) {
        Embedder::preprocess(self, &frame.rgb, frame.width, frame.height);
    }
    fn run(&mut self) -> Result<Vec<f32>, String> {
        Embedder::run(self).map_err(|e| e.to_string())
    }
    fn run_with_map(&mut self) -> Result<(Vec<f32>, Option<FeatureMap>), String> {
        Embedder::run_with_map(self).map_err(|e| e.to_string())
    }
}

/// What the shell needs of the store (the real [`Store`], or one with injected faults).
pub trait Storage {
    /// Store a capture durably; the new sample.
    fn add(
        &mut self,
        label: &str,
        embedding: &[f32],
        thumb: &[u8],
        time_ms: u64,
        press: Option<u64>,
    ) -> Result<SampleInfo, StoreError>;
    /// Apply a journaled edit.
    fn apply(&mut self, edit: &Edit) -> Result<(), StoreError>;
    /// Save the live head.
    fn save_head(&mut self, head: &Head) -> Result<(), StoreError>;
    /// Add a staged batch (an import); how many samples it added.
    fn commit_batch(&mut self, batch: Batch) -> Result<usize, StoreError>;
    /// Every sample, with embeddings (for imprinting and fine-tuning).
    fn samples(&self) -> &[Sample];
}

impl Storage for Store {
    fn add(
        &mut self,
        l: &str,
        e: &[f32],
        t: &[u8],
        ms: u64,
        press: Option<u64>,
    ) -> Result<SampleInfo, StoreError> {
        let id = Store::add_to_press(self, l, e, t, ms, press)?;
        let added = Store::samples(self).iter().find(|s| s.id == id);
        added.map(Sample::info).ok_or(StoreError::NoSample(id))
    }
    fn apply(&mut self, edit: &Edit) -> Result<(), StoreError> {
        Store::apply(self, edit)
    }
    fn save_head(&mut self, head: &Head) -> Result<(), StoreError> {
        Store::save_head(self, head)
    }
    fn commit_batch(&mut self, batch: Batch) -> Result<usize, StoreError> {
        Store::commit_batch(self, batch)
    }
    fn samples(&self) -> &[Sample] {
        Store::samples(self)
    }
}

/// The parts the shell drives.
pub struct Parts<'a> {
    /// Frames.
    pub camera: &'a mut dyn FrameSource,
    /// Frames to embeddings.
    pub embedder: &'a mut dyn Embed,
    /// What was taught.
    pub store: &'a mut dyn Storage,
    /// Background fine-tuning.
    pub trainer: &'a mut dyn Trainer,
    /// LEDs.
    pub indicator: &'a mut dyn Indicator,
    /// Time.
    pub clock: &'a dyn Clock,
}

/// One poll of the loop at a time (see the module docs).
pub struct Shell<'a> {
    session: Session,
    parts: Parts<'a>,
    hub: Arc<Hub>,
    actions: Receiver<Command>,
    waiting: VecDeque<Command>,
    head: Option<Arc<Head>>,
    /// The newest embedded frame, its embedding, and its thumbnail once a capture needed it.
    last: Option<(Arc<Frame>, Vec<f32>)>,
    thumb: Option<Vec<u8>>,
    backbone: BackboneId,
    threshold: f32,
    samples_seen: u64,
    /// The live head prepared for class-activation maps (rebuilt when the head changes).
    explainer: Option<(Arc<Head>, Explainer)>,
    /// Unsure frames to the inbox's writer (bounded: a full queue drops the frame).
    inbox_tx: Option<SyncSender<InboxFrame>>,
    /// Print console lines (off in simulations).
    pub print: bool,
}

/// An unsure frame for the inbox's writer thread (it makes the thumbnail there).
pub struct InboxFrame {
    frame: Arc<Frame>,
    embedding: Vec<f32>,
    reason: crate::inbox::Reason,
    guess: Option<String>,
    confidence: f32,
    time_ms: u64,
}

/// Write unsure frames to `inbox` until the queue closes: encode the thumbnail, add it.
/// A frame that cannot be kept is logged and dropped: the inbox only suggests.
pub fn write_inbox(rx: Receiver<InboxFrame>, inbox: &crate::inbox::Inbox) {
    for f in rx {
        let thumb = match crate::frame::thumbnail_jpeg(&f.frame) {
            Ok(t) => t,
            Err(e) => {
                log::debug!("inbox: frame not kept: {e}");
                continue;
            }
        };
        let entry = crate::inbox::Entry {
            thumb_jpeg: &thumb,
            embedding: &f.embedding,
            reason: f.reason,
            guess: f.guess,
            confidence: f.confidence,
            time_ms: f.time_ms,
        };
        if let Err(e) = inbox.add(&entry) {
            log::warn!("inbox: frame not kept: {e}");
        }
    }
}

impl<'a> Shell<'a> {
    /// A shell around `session` (whose loaded head, if any, is used from the start).
    pub fn new(
        session: Session,
        parts: Parts<'a>,
        hub: Arc<Hub>,
        actions: Receiver<Command>,
        backbone: BackboneId,
        threshold: f32,
    ) -> Self {
        let head = session.head().cloned();
        let mut shell = Shell {
            session,
            parts,
            hub,
            actions,
            waiting: VecDeque::new(),
            head,
            last: None,
            thumb: None,
            inbox_tx: None,
            backbone,
            threshold,
            samples_seen: 0,
            explainer: None,
            print: true,
        };
        shell.hub.set_head(shell.head.clone());
        shell.publish_samples();
        shell
    }

    /// The core (for tests and the final report).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// One turn of the loop; returns when to poll next (ms on the clock).
    pub fn poll(&mut self) -> u64 {
        while let Some(cmd) = self
            .waiting
            .pop_front()
            .or_else(|| self.actions.try_recv().ok())
        {
            let now = self.parts.clock.now_ms();
            let origin = Origin {
                source: cmd.source,
                request: cmd.request,
                at_ms: cmd.at_ms.unwrap_or(now),
            };
            self.feed(Input::Action {
                action: cmd.action,
                origin,
            });
        }
        while let Some((generation, outcome)) = self.parts.trainer.finished() {
            self.feed(Input::FineTuned {
                generation,
                outcome,
            });
        }
        let busy = self.frame();
        self.feed(Input::Tick);
        let now = self.parts.clock.now_ms();
        if busy {
            now
        } else {
            self.session.next_deadline(now).min(now + CAMERA_POLL_MS)
        }
    }

    /// Wait (real time) until `deadline_ms`, or until an action arrives.
    pub fn idle(&mut self, deadline_ms: u64) {
        let wait = deadline_ms.saturating_sub(self.parts.clock.now_ms());
        if wait > 0
            && let Ok(cmd) = self.actions.recv_timeout(Duration::from_millis(wait))
        {
            self.waiting.push_back(cmd);
        }
    }

    /// Poll the camera and feed what came; whether a frame (good or bad) arrived.
    fn frame(&mut self) -> bool {
        let t0 = Instant::now();
        let now = self.parts.clock.now_ms();
        let frame = match self.parts.camera.poll(now) {
            Ok(Some(f)) => f,
            Ok(None) => return false,
            Err(e) => {
                self.feed(Input::Fault(Fault::Camera(e.to_string())));
                return false;
            }
        };
        if let Err(e) = frame.check() {
            self.feed(Input::Fault(Fault::Frame(e.to_string())));
            return true;
        }
        let t1 = Instant::now();
        self.parts.embedder.preprocess(&frame);
        let t2 = Instant::now();
        // A viewer of the heat map asked for it: the same pass, one more output read.
        let wanted = self
            .head
            .is_some()
            .then(|| self.hub.heatmap_wanted())
            .flatten();
        let ran = match wanted {
            Some(_) => self.parts.embedder.run_with_map(),
            None => self.parts.embedder.run().map(|e| (e, None)),
        };
        let (embedding, map) = match ran {
            Ok(e) => e,
            Err(e) => {
                self.feed(Input::Fault(Fault::Backbone(e)));
                return true;
            }
        };
        let t3 = Instant::now();
        let mut best = None;
        let guess = self.head.as_ref().map(|h| {
            let p = h.predict(&embedding);
            best = Some(p.best);
            let second = p
                .probs
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != p.best)
                .map(|(_, &v)| v)
                .fold(0.0f32, f32::max);
            Guess {
                best: p.best,
                margin: p.confidence - second,
                class: p.known.then_some(p.best),
                confidence: p.confidence,
            }
        });
        let heat = match (map, wanted) {
            (Some(map), Some(asked)) => asked.or(best).and_then(|k| self.heat_map(k, &map)),
            _ => None,
        };
        let us = |a: Instant, b: Instant| (b - a).as_micros() as u64;
        let stages = Stages {
            decode_us: us(t0, t1),
            preprocess_us: us(t1, t2),
            backbone_us: us(t2, t3),
            head_us: us(t3, Instant::now()),
        };
        self.hub.stages.record(&stages);
        let tag = frame.tag.clone();
        let frame = Arc::new(frame);
        let version = self.hub.frame.put(Arc::clone(&frame));
        if let Some(mut heat) = heat {
            let (x, y, side) = crate::preprocess::crop(frame.width, frame.height);
            heat.frame = version;
            heat.crop = [x as f32, y as f32, side as f32];
            self.hub.heat.put(Arc::new(heat));
        }
        self.last = Some((frame, embedding));
        self.thumb = None;
        self.feed(Input::Frame(FrameReport { guess, tag, stages }));
        true
    }

    /// The class-activation map of class `k` for the live head (`None`: no head, no such
    /// class, or a map of another width than the head's).
    fn heat_map(&mut self, k: usize, map: &FeatureMap) -> Option<HeatMap> {
        let head = self.head.as_ref()?;
        if k >= head.num_classes() || map.c != head.dim {
            return None;
        }
        if !matches!(&self.explainer, Some((h, _)) if Arc::ptr_eq(h, head)) {
            self.explainer = Some((Arc::clone(head), Explainer::new(head)));
        }
        let (_, ex) = self.explainer.as_ref()?;
        let m = ex.map(k, map);
        Some(HeatMap {
            frame: 0,
            class: head.classes[k].clone(),
            class_index: k,
            h: m.h,
            w: m.w,
            values: m.values,
            logit: m.logit,
            bias: m.bias,
            crop: [0.0; 3],
        })
    }

    /// Send unsure frames to the inbox's writer through `tx`.
    pub fn with_inbox(mut self, tx: SyncSender<InboxFrame>) -> Self {
        self.inbox_tx = Some(tx);
        self
    }

    /// Step the core with `input` and everything its effects feed back, in order.
    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let now = self.parts.clock.now_ms();
            for effect in self.session.step(now, input) {
                queue.extend(self.carry_out(effect));
            }
        }
        self.publish_samples();
    }

    fn carry_out(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Show(lamp) => self.parts.indicator.show(lamp),
            Effect::Store(request) => {
                let outcome = self.store(&request);
                return Some(Input::Stored { request, outcome });
            }
            Effect::Imprint {
                generation,
                classes,
            } => {
                let job = Job::from_samples(generation, self.parts.store.samples(), &classes);
                let head = job.imprint(&self.backbone, self.threshold);
                let head = head.map(|h| h.map(Arc::new));
                return Some(Input::Imprinted { generation, head });
            }
            Effect::FineTune {
                generation,
                classes,
            } => self.parts.trainer.submit(Job::from_samples(
                generation,
                self.parts.store.samples(),
                &classes,
            )),
            Effect::UseHead(h) => {
                self.hub.set_head(h.clone());
                self.head = h;
            }
            Effect::Inbox {
                reason,
                guess,
                confidence,
            } => {
                if let (Some(tx), Some((frame, embedding))) = (&self.inbox_tx, &self.last) {
                    let f = InboxFrame {
                        frame: Arc::clone(frame),
                        embedding: embedding.clone(),
                        reason,
                        guess,
                        confidence,
                        time_ms: self.parts.clock.unix_ms(),
                    };
                    // Full: the writer is behind (a slow card); this frame is skipped.
                    let _ = tx.try_send(f);
                }
            }
            Effect::Publish(event) => self.publish(event),
            Effect::PingWatchdog => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
        None
    }

    fn store(&mut self, request: &StoreRequest) -> Result<Option<SampleInfo>, Refusal> {
        let result = match request {
            StoreRequest::Capture { label, press, .. } => {
                let Some((frame, embedding)) = &self.last else {
                    return Err(Refusal::NoFrame);
                };
                if self.thumb.is_none() {
                    let t = crate::frame::thumbnail_jpeg(frame)
                        .map_err(|e| Refusal::BadFrame(e.to_string()))?;
                    self.thumb = Some(t);
                }
                let thumb = self.thumb.as_deref().unwrap_or_default();
                let time = self.parts.clock.unix_ms();
                self.parts
                    .store
                    .add(label, embedding, thumb, time, *press)
                    .map(Some)
            }
            StoreRequest::FromInbox { id, label, .. } => {
                let inbox = self
                    .hub
                    .inbox()
                    .ok_or_else(|| Refusal::Failed("this appliance keeps no inbox".into()))?;
                let (item, embedding, thumb) =
                    inbox.get(*id).map_err(|e| Refusal::Failed(e.to_string()))?;
                if item.backbone != self.backbone.digest {
                    return Err(Refusal::Failed(format!(
                        "inbox frame {id} was embedded by another backbone; dismiss it"
                    )));
                }
                let stored = self
                    .parts
                    .store
                    .add(label, &embedding, &thumb, item.time_ms, None);
                if stored.is_ok()
                    && let Err(e) = inbox.remove(*id)
                {
                    log::warn!("inbox: {e}");
                }
                stored.map(Some)
            }
            StoreRequest::Edit { edit, .. } => self.parts.store.apply(edit).map(|()| None),
            StoreRequest::SaveHead { head, .. } => self.parts.store.save_head(head).map(|()| None),
            StoreRequest::Import {
                samples,
                classes,
                origin,
            } => {
                let Some(batch) = self.hub.take_import(origin.request) else {
                    return Err(Refusal::Failed("the import's staged files are gone".into()));
                };
                if batch.len() != samples.len() {
                    return Err(Refusal::Failed("the import's staged files changed".into()));
                }
                self.parts.store.commit_batch(batch).map(|_| {
                    // The samples are in; a class list not saved now is rebuilt from their
                    // labels at the next start.
                    let edit = Edit {
                        classes: classes.clone(),
                        ..Edit::default()
                    };
                    if classes.is_some()
                        && let Err(e) = self.parts.store.apply(&edit)
                    {
                        log::warn!("the imported classes are not saved yet: {e}");
                    }
                    None
                })
            }
        };
        result.map_err(|e| {
            // The event says what the user must know; the log keeps the path and the cause.
            log::warn!("{e}");
            match e.cause() {
                Cause::DiskFull => Refusal::DiskFull,
                Cause::ReadOnly => Refusal::ReadOnly,
                Cause::Other => Refusal::Failed(e.to_string()),
            }
        })
    }

    fn publish(&mut self, event: Event) {
        if self.print
            && let Some(line) = console::line(&event)
        {
            match line {
                console::Line::Out(l) => self.say(&l),
                console::Line::Warn(l) => log::warn!("{l}"),
            }
        }
        let event = match (event, self.hub.inbox()) {
            // The inbox's count is the inbox's to tell.
            (Event::Status(s), Some(inbox)) => {
                let mut s = (*s).clone();
                s.inbox = inbox.len();
                Event::Status(Arc::new(s))
            }
            (e, _) => e,
        };
        if let Event::Status(s) = &event {
            self.hub.status.put(Arc::clone(s));
        }
        self.hub.bus.publish(event);
    }

    fn publish_samples(&mut self) {
        if self.session.samples_version() != self.samples_seen {
            self.samples_seen = self.session.samples_version();
            self.hub.samples.put(Arc::new(SampleList {
                classes: self.session.classes().to_vec(),
                samples: self.session.samples().to_vec(),
            }));
        }
    }

    /// A line on stdout (a closed stdout is not the loop's problem).
    pub fn say(&self, line: &str) {
        if self.print {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }

    /// The loop is ending: a last status snapshot, and observers are told.
    pub fn finish(&mut self) -> u64 {
        let now = self.parts.clock.now_ms();
        let status = Arc::new(self.session.status(now));
        let s = &status.stages;
        if status.frames > 0 {
            let part = |name: &str, p: &crate::session::StageShare| {
                format!("{name} {:.1} ms ({:.0} %)", p.ms_per_frame, 100.0 * p.share)
            };
            self.say(&format!(
                "teachcam: per frame: {}, {}, {}, {}",
                part("decode", &s.decode),
                part("preprocess", &s.preprocess),
                part("backbone", &s.backbone),
                part("head", &s.head)
            ));
        }
        let frames = status.frames;
        self.publish(Event::Status(status));
        self.hub.bus.close();
        frames
    }
}

/// Half the watchdog period systemd asked for (`WATCHDOG_USEC`, for this process when
/// `WATCHDOG_PID` is set), or `None` without a watchdog.
fn watchdog_interval_ms() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some((usec / 2000).max(1))
}

/// Sets the flag when dropped: however the loop ends, the other threads are told to stop.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sample the buttons every few milliseconds (so a press is seen however long an inference
/// takes) and send what they mean to the loop.
fn read_buttons(
    buttons: &mut dyn Buttons,
    settings: &Settings,
    clock: &MonoClock,
    tx: &Sender<Command>,
    stop: &AtomicBool,
) {
    let mut panel = ButtonPanel::new(settings.buttons, settings.timing);
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now_ms();
        match buttons.read(now) {
            Ok(levels) => {
                failing = false;
                for action in panel.update(now, &levels) {
                    let cmd = Command {
                        action,
                        source: settings.source,
                        request: None,
                        at_ms: Some(now),
                    };
                    if tx.send(cmd).is_err() {
                        return;
                    }
                }
            }
            // Logged when it starts failing, not every 5 ms.
            Err(e) if !failing => {
                failing = true;
                log::warn!("buttons: {e}");
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(BUTTON_POLL_MS));
    }
}

/// An observer's body (the web console, MQTT): it runs on a thread of its own for the loop's
/// lifetime, gets the hub and the stop flag, and returns once the hub's bus is finished (the
/// loop ended) or the flag is set, or at once if it starts threads of its own.
pub type Observer<'a> = Box<dyn FnOnce(&Arc<Hub>, &AtomicBool) + Send + 'a>;

/// How a run ended (errors aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The duration passed, or SIGTERM/SIGINT.
    Stopped,
    /// SIGHUP: stopped cleanly so that it is started again with the configuration re-read
    /// (`teachcam run` exits with [`RELOAD_EXIT_CODE`]; the unit restarts on it).
    Reload,
}

/// The exit code of `teachcam run` after SIGHUP (the unit's `RestartForceExitStatus`).
pub const RELOAD_EXIT_CODE: i32 = 3;

/// The core for this run: the stored head if it fits this backbone (else the core imprints
/// one from the samples), the state directory's class list (seeded from the configuration
/// the first time) and the stored samples.
fn open_session(
    settings: &Settings,
    backbone: &Backbone,
    store: &mut Store,
    now_ms: u64,
) -> Session {
    let id = backbone.id();
    store.set_backbone(&id.digest);
    let head = store
        .load_head()
        .filter(|h| h.backbone.same_as(id) && h.dim == backbone.dim())
        .map(Arc::new);
    let labels: Vec<&str> = store.samples().iter().map(|s| s.label.as_str()).collect();
    let (classes, seed) = resolve_classes(&settings.classes, store.classes(), &labels);
    if seed {
        let edit = Edit {
            classes: Some(classes.clone()),
            ..Edit::default()
        };
        if let Err(e) = store.apply(&edit) {
            log::warn!("class list not saved yet: {e}");
        }
    } else if classes != settings.classes {
        log::info!(
            "classes from {}: {} (the state directory's list is used once it exists)",
            store.dir().display(),
            classes.join(", ")
        );
    }
    let samples = store.samples().iter().map(Sample::info).collect();
    let cfg = SessionConfig {
        watchdog_every_ms: watchdog_interval_ms(),
        ..settings.session.clone()
    };
    Session::new(cfg, now_ms, classes, samples, head)
}

/// Run the appliance until the duration passes or SIGTERM/SIGINT/SIGHUP arrives; each of
/// `observers` runs on a thread of its own for the loop's lifetime.
pub fn run(
    settings: &Settings,
    backbone: &Backbone,
    store: &mut Store,
    camera: &mut dyn FrameSource,
    buttons: &mut dyn Buttons,
    indicator: &mut dyn Indicator,
    observers: Vec<Observer<'_>>,
) -> Result<Ending, DaemonError> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(DaemonError::Signals)?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(DaemonError::Signals)?;
    let clock = MonoClock::new();
    let id = backbone.id().clone();
    let session = open_session(settings, backbone, store, clock.now_ms());
    let (hub, actions) = Hub::new(store.dir().to_path_buf());
    hub.set_id_reserver(store.id_reserver());
    let mut trainer = ThreadTrainer::spawn(id.clone(), settings.threshold, settings.train_budget)
        .map_err(|source| DaemonError::Thread {
        what: "fine-tune",
        source,
    })?;
    let mut embedder = backbone.embedder();
    let tx = hub.sender();
    // The inbox of unsure frames: an inbox that cannot be opened is reported and done
    // without (it only suggests; the appliance runs on).
    let inbox = match settings.inbox {
        0 => None,
        n => match crate::inbox::Inbox::open(store.dir(), &id.digest, n) {
            Ok(i) => Some(Arc::new(i)),
            Err(e) => {
                log::warn!("no inbox of unsure frames: {e}");
                None
            }
        },
    };
    if let Some(i) = &inbox {
        hub.set_inbox(Arc::clone(i));
    }
    let frames = std::thread::scope(|scope| {
        let _stop_threads = StopOnDrop(&stop);
        scope.spawn(|| read_buttons(buttons, settings, &clock, &tx, &stop));
        if let Some(path) = settings.status.as_deref() {
            let sub = hub.subscribe(8);
            let (stop, hub) = (&stop, &hub);
            scope.spawn(move || status::write_status(&sub, path, stop, Some(hub.as_ref())));
        }
        for observer in observers {
            let (stop, hub) = (&stop, &hub);
            scope.spawn(move || observer(hub, stop));
        }
        let parts = Parts {
            camera,
            embedder: &mut embedder,
            store,
            trainer: &mut trainer,
            indicator,
            clock: &clock,
        };
        let mut shell = Shell::new(
            session,
            parts,
            Arc::clone(&hub),
            actions,
            id,
            settings.threshold,
        );
        if let Some(inbox) = &inbox {
            // Two frames may wait; the writer encodes and writes them off the loop.
            let (itx, irx) = sync_channel(2);
            scope.spawn(move || write_inbox(irx, inbox));
            shell = shell.with_inbox(itx);
        }
        // systemd: ready now that the model is loaded and the store is open; watchdog pings
        // come from the loop itself (an effect of the core), so a hung loop gets restarted.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let c = shell.session().classes();
        shell.say(&format!(
            "teachcam: running with {} classes ({}), {} stored samples",
            c.len(),
            c.join(", "),
            shell.session().samples().len()
        ));
        let end = settings.duration.map(|d| d.as_millis() as u64);
        while !stop.load(Ordering::Relaxed) && end.is_none_or(|e| clock.now_ms() < e) {
            let next = shell.poll();
            shell.idle(end.map_or(next, |e| next.min(e)));
        }
        let frames = shell.finish();
        let stored = shell.session().samples().len();
        (frames, stored)
    });
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    drop(trainer);
    let _ = writeln!(
        std::io::stdout().lock(),
        "teachcam: stopped after {} frames; {} samples stored",
        frames.0,
        frames.1
    );
    Ok(if hup.load(Ordering::Relaxed) {
        Ending::Reload
    } else {
        Ending::Stopped
    })
}
