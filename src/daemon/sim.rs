//! Five minutes of simulated trouble through the real shell and core, in a few seconds: a
//! simulated clock, the synthetic camera behind the fault injector (drops, torn and noisy
//! frames, error bursts, stalls), a fake backbone that costs 20 ms of simulated time and fails
//! now and then, and the real store in a temporary directory behind a wrapper that makes the
//! disk full, then read-only, for a while. Scripted actions (captures, a burst, undo, class
//! edits) arrive through the observer API as a web console's would.
//!
//! Checked: the loop runs to the end; after every camera fault the frame rate is back within
//! a few seconds; captures are refused (not fatal) while the disk is full or read-only and
//! stored again afterwards; every acknowledged capture is on disk at the end with the label
//! the events say it has; the events were all delivered.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::bus::Note;
use crate::camera::Synthetic;
use crate::camera::fault::{FaultConfig, FaultInjector};
use crate::gpio::Lamp;
use crate::head::train::TrainConfig;
use crate::rng::Rng;
use crate::session::{Action, CameraState, ClassRef, RequestId};
use trainer::InlineTrainer;

const END_MS: u64 = 5 * 60 * 1000;
const FRAME_MS: u64 = 100;
const EMBED_COST_MS: u64 = 20;
const DISK_FULL: (u64, u64) = (100_000, 115_000);
const READ_ONLY: (u64, u64) = (200_000, 210_000);
const BACKBONE_DOWN: (u64, u64) = (250_000, 253_000);

struct SimClock {
    now: Cell<u64>,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
    fn unix_ms(&self) -> u64 {
        1_700_000_000_000 + self.now.get()
    }
}

fn within(t: u64, w: (u64, u64)) -> bool {
    (w.0..w.1).contains(&t)
}

/// Mean colour of each quadrant: a 12-d "embedding" that costs simulated time.
struct FakeBackbone<'c> {
    clock: &'c SimClock,
    rng: Rng,
    input: Vec<f32>,
}

impl Embed for FakeBackbone<'_> {
    fn preprocess(&mut self, f: &Frame) {
        self.input = vec![0.0; 12];
        for y in 0..f.height {
            for x in 0..f.width {
                let q = 2 * (2 * y / f.height) + 2 * x / f.width;
                for c in 0..3 {
                    self.input[q * 3 + c] += f32::from(f.rgb[(y * f.width + x) * 3 + c]);
                }
            }
        }
        let n = (f.width * f.height / 4).max(1) as f32;
        self.input.iter_mut().for_each(|v| *v /= n * 255.0);
    }

    fn run(&mut self) -> Result<Vec<f32>, String> {
        let now = self.clock.now.get() + EMBED_COST_MS;
        self.clock.now.set(now);
        if within(now, BACKBONE_DOWN) || self.rng.below(100) == 0 {
            return Err("injected backbone error".into());
        }
        Ok(self.input.clone())
    }
}

/// The real store, with a full disk and a read-only state directory at set times.
struct FaultyStore<'s, 'c> {
    inner: &'s mut Store,
    clock: &'c SimClock,
}

impl FaultyStore<'_, '_> {
    fn fault(&self) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let kind = if within(now, DISK_FULL) {
            std::io::ErrorKind::StorageFull
        } else if within(now, READ_ONLY) {
            std::io::ErrorKind::ReadOnlyFilesystem
        } else {
            return Ok(());
        };
        Err(StoreError::Io {
            path: self.inner.dir().to_path_buf(),
            source: std::io::Error::from(kind),
        })
    }
}

impl Storage for FaultyStore<'_, '_> {
    fn add(
        &mut self,
        l: &str,
        e: &[f32],
        t: &[u8],
        ms: u64,
        press: Option<u64>,
    ) -> Result<SampleInfo, StoreError> {
        self.fault()?;
        Storage::add(self.inner, l, e, t, ms, press)
    }
    fn apply(&mut self, edit: &Edit) -> Result<(), StoreError> {
        self.fault()?;
        self.inner.apply(edit)
    }
    fn save_head(&mut self, head: &Head) -> Result<(), StoreError> {
        self.fault()?;
        self.inner.save_head(head)
    }
    fn commit_batch(&mut self, batch: crate::store::Batch) -> Result<usize, StoreError> {
        self.fault()?;
        self.inner.commit_batch(batch)
    }
    fn samples(&self) -> &[Sample] {
        self.inner.samples()
    }
}

/// Records what the indicator was told.
#[derive(Default)]
struct Lamps(Vec<Lamp>);

impl Indicator for Lamps {
    fn show(&mut self, lamp: Lamp) {
        self.0.push(lamp);
    }
}

/// The script: a capture every 1.5 s cycling over the classes, an undo every 20 s, a burst,
/// and class edits.
fn script() -> VecDeque<(u64, Action)> {
    let mut v: Vec<(u64, Action)> = (1..END_MS / 1500)
        .map(|k| (k * 1500, Action::Capture(ClassRef::Index((k % 3) as usize))))
        .collect();
    v.extend((1..15).map(|k| (k * 20_000 + 700, Action::Undo)));
    v.push((
        60_300,
        Action::Burst {
            class: ClassRef::Name("ring".into()),
            count: 5,
            every_ms: 250,
        },
    ));
    v.push((70_100, Action::AddClass("cup".into())));
    v.push((
        130_100,
        Action::RenameClass {
            from: "ball".into(),
            to: "sphere".into(),
        },
    ));
    v.push((205_100, Action::AddClass("refused while read-only".into())));
    v.push((230_100, Action::RemoveClass("cup".into())));
    v.sort_by_key(|(t, _)| *t);
    v.into()
}

#[test]
fn five_minutes_of_faults_never_stop_the_loop_and_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let clock = SimClock { now: Cell::new(0) };
    let faults = FaultConfig {
        seed: 11,
        drop_pct: 5,
        torn_pct: 3,
        noise_pct: 2,
        every_ms: 25_000,
        burst_ms: 2_000,
        stall_ms: 6_000,
    };
    let mut camera = FaultInjector::new(Synthetic::new(FRAME_MS, 3000), faults);
    let mut backbone = FakeBackbone {
        clock: &clock,
        rng: Rng::new(5),
        input: Vec::new(),
    };
    let cfg = TrainConfig {
        l2_grid: vec![1e-3],
        max_epochs: 10,
        ..TrainConfig::default()
    };
    let id = BackboneId::default();
    let mut trainer = InlineTrainer::new(id.clone(), cfg);
    let mut lamps = Lamps::default();
    let classes: Vec<String> = ["ball", "block", "ring"].map(String::from).to_vec();
    store
        .apply(&Edit {
            classes: Some(classes.clone()),
            ..Edit::default()
        })
        .unwrap();
    let session = Session::new(SessionConfig::default(), 0, classes, Vec::new(), None);
    let (hub, actions) = Hub::new(dir.path().to_path_buf());
    let events = hub.subscribe(1 << 20);
    let mut faulty = FaultyStore {
        inner: &mut store,
        clock: &clock,
    };
    let parts = Parts {
        camera: &mut camera,
        embedder: &mut backbone,
        store: &mut faulty,
        trainer: &mut trainer,
        indicator: &mut lamps,
        clock: &clock,
    };
    let mut shell = Shell::new(session, parts, Arc::clone(&hub), actions, id, 0.3);
    shell.print = false;

    let mut script = script();
    let mut requests = BTreeMap::new();
    let mut polls = 0u64;
    while clock.now_ms() < END_MS {
        while script.front().is_some_and(|(t, _)| *t <= clock.now_ms()) {
            let (t, a) = script.pop_front().unwrap();
            requests.insert(hub.send(a.clone(), Source::Script), (t, a));
        }
        let next = shell.poll();
        let next = next.min(script.front().map_or(u64::MAX, |(t, _)| *t));
        clock.now.set(next.max(clock.now_ms()));
        polls += 1;
        assert!(
            polls < 1_000_000,
            "the loop stopped advancing at {}",
            clock.now_ms()
        );
    }
    shell.finish();
    let mirror: Vec<SampleInfo> = shell.session().samples().to_vec();
    let final_classes = shell.session().classes().to_vec();
    drop(shell);
    let windows = camera.windows().to_vec();
    assert!(windows.len() >= 6, "timed camera faults: {windows:?}");

    // Every event arrived; replay them into the expected store content.
    let mut got = Vec::new();
    while let Some(n) = events.try_next() {
        match n {
            Note::Event(e) => got.push(e),
            Note::Lost(n) => panic!("{n} events lost"),
        }
    }
    let mut expect: BTreeMap<u64, String> = BTreeMap::new();
    let (mut refused_full, mut refused_ro, mut saved_after) = (0, 0, [0, 0]);
    let mut statuses = Vec::new();
    let (mut lost, mut back) = (0, 0);
    for e in &got {
        match e {
            Event::CaptureSaved { sample, origin } => {
                assert!(requests.contains_key(&origin.request.unwrap()));
                expect.insert(sample.id, sample.label.clone());
                saved_after[0] += usize::from(origin.at_ms > DISK_FULL.1);
                saved_after[1] += usize::from(origin.at_ms > READ_ONLY.1);
            }
            Event::CaptureRefused { reason, .. } => match reason {
                Refusal::DiskFull => refused_full += 1,
                Refusal::ReadOnly => refused_ro += 1,
                _ => {}
            },
            // A press goes whole (bursts: every frame of it).
            Event::Undone { ids, .. } => {
                for id in ids {
                    expect.remove(id);
                }
            }
            Event::ClassRenamed { from, to, .. } => {
                for l in expect.values_mut().filter(|l| *l == from) {
                    *l = to.clone();
                }
            }
            Event::ClassRemoved { name, .. } => expect.retain(|_, l| l != name),
            Event::CameraLost { .. } => lost += 1,
            Event::CameraBack { .. } => back += 1,
            Event::Status(s) => statuses.push(Arc::clone(s)),
            _ => {}
        }
    }
    assert!(expect.len() > 100, "captures were stored: {}", expect.len());
    assert!(
        refused_full > 0 && refused_ro > 0,
        "{refused_full} {refused_ro}"
    );
    assert!(
        saved_after[0] > 20 && saved_after[1] > 20,
        "{saved_after:?}"
    );
    assert!(
        lost >= 1 && lost == back,
        "camera lost {lost} times, back {back} times"
    );
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::ActionRefused { origin, .. }
            if within(origin.at_ms, READ_ONLY))),
        "the class edit during the read-only window was refused"
    );
    assert_eq!(final_classes, ["sphere", "block", "ring"]);

    // Nothing acknowledged is lost: the store on disk is exactly what the events said.
    // (The loop's store is closed first: one writer at a time.)
    drop(store);
    let (reopened, report) = Store::open(dir.path()).unwrap();
    assert!(report.quarantined.is_empty() && !report.edit_completed);
    let on_disk: BTreeMap<u64, String> = reopened
        .samples()
        .iter()
        .map(|s| (s.id, s.label.clone()))
        .collect();
    assert_eq!(on_disk, expect);
    let mirrored: BTreeMap<u64, String> = mirror.iter().map(|s| (s.id, s.label.clone())).collect();
    assert_eq!(mirrored, expect);
    assert_eq!(reopened.classes().unwrap(), final_classes.as_slice());
    let head = reopened.load_head().expect("a head was saved");
    assert!(
        head.classes.iter().all(|c| final_classes.contains(c)),
        "{:?}",
        head.classes
    );

    // The frame rate is back within 4 s after every camera fault, and healthy elsewhere.
    let fps_at = |t: u64| {
        statuses
            .iter()
            .find(|s| s.uptime_s * 1000 >= t)
            .map(|s| s.fps)
    };
    for w in &windows {
        let recovered = statuses.iter().any(|s| {
            let t = s.uptime_s * 1000;
            t > w.end_ms + 1000 && t <= w.end_ms + 4000 && s.fps >= 7.0
        });
        assert!(
            recovered,
            "no recovery after {w:?}: fps {:?}",
            fps_at(w.end_ms + 2000)
        );
    }
    let quiet: Vec<f64> = statuses
        .iter()
        .filter(|s| {
            let t = s.uptime_s * 1000;
            t > 5000
                && !within(t, BACKBONE_DOWN)
                && !within(t.saturating_sub(2000), BACKBONE_DOWN)
                && windows
                    .iter()
                    .all(|w| t + 2000 < w.start_ms || t > w.end_ms + 2000)
        })
        .map(|s| s.fps)
        .collect();
    assert!(quiet.len() > 150, "{}", quiet.len());
    let low = quiet.iter().filter(|f| **f < 7.0).count();
    assert!(
        low * 20 < quiet.len(),
        "{low} of {} quiet seconds below 7 fps",
        quiet.len()
    );
    let last = statuses.last().unwrap();
    assert_eq!(last.camera, CameraState::Live);
    assert!(last.errors.camera > 0 && last.errors.frame > 0 && last.errors.backbone > 0);
    assert!(last.errors.store > 0 && last.errors.captures_refused > 0);
    // The LEDs were told about trouble.
    assert!(lamps.0.contains(&Lamp::Alert));
    eprintln!(
        "simulated {} s in {polls} polls: {} frames, {} samples kept, {} camera faults, fps {:.1} at the end",
        END_MS / 1000,
        last.frames,
        expect.len(),
        windows.len(),
        last.fps
    );
}

/// The observer API a web console or MQTT bridge will use: frames, snapshots, thumbnails,
/// actions with request ids, all without touching the store or the loop.
#[test]
fn observers_see_frames_snapshots_and_the_outcome_of_their_own_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let clock = SimClock { now: Cell::new(0) };
    let mut camera = Synthetic::new(FRAME_MS, 3000);
    let mut backbone = FakeBackbone {
        clock: &clock,
        rng: Rng::new(1),
        input: Vec::new(),
    };
    let id = BackboneId::default();
    let mut trainer = InlineTrainer::new(id.clone(), TrainConfig::default());
    let mut lamps = Lamps::default();
    let classes: Vec<String> = ["ball", "block"].map(String::from).to_vec();
    // One frame a press: the test follows each request to its one sample.
    let cfg = SessionConfig {
        press_frames: 1,
        ..SessionConfig::default()
    };
    let session = Session::new(cfg, 0, classes, Vec::new(), None);
    let (hub, actions) = Hub::new(dir.path().to_path_buf());
    let parts = Parts {
        camera: &mut camera,
        embedder: &mut backbone,
        store: &mut store,
        trainer: &mut trainer,
        indicator: &mut lamps,
        clock: &clock,
    };
    let mut shell = Shell::new(session, parts, Arc::clone(&hub), actions, id, 0.3);
    shell.print = false;
    let events = hub.subscribe(64);
    let run_until = |shell: &mut Shell, t: u64| {
        while clock.now_ms() < t {
            let next = shell.poll();
            clock.now.set(next.max(clock.now_ms()));
        }
    };
    // The class list and (empty) samples are there before anything happened.
    assert_eq!(hub.samples().unwrap().classes, ["ball", "block"]);
    run_until(&mut shell, 50);
    let (v, frame) = hub.latest_frame().expect("a frame");
    assert_eq!((frame.width, frame.height), (160, 120));
    assert!(
        hub.wait_frame(v, Duration::ZERO).is_none(),
        "nothing newer yet"
    );

    let outcome = |want: RequestId| {
        std::iter::from_fn(|| events.try_next())
            .filter_map(|n| match n {
                Note::Event(e) => Some(e),
                Note::Lost(_) => None,
            })
            .find(|e| match e {
                Event::CaptureSaved { origin, .. }
                | Event::CaptureRefused { origin, .. }
                | Event::ClassAdded { origin, .. }
                | Event::SamplesDeleted { origin, .. }
                | Event::ActionRefused { origin, .. } => origin.request == Some(want),
                _ => false,
            })
    };
    let r1 = hub.send(
        Action::Capture(ClassRef::Name("block".into())),
        Source::Http,
    );
    run_until(&mut shell, 100);
    let Some(Event::CaptureSaved { sample, origin }) = outcome(r1) else {
        panic!("no capture for request {r1}");
    };
    assert_eq!(
        (sample.label.as_str(), origin.source),
        ("block", Source::Http)
    );
    let jpeg = hub.thumbnail(sample.id).unwrap();
    assert!(crate::frame::decode_jpeg(&jpeg, "t").is_ok());
    assert!(matches!(hub.thumbnail(999), Err(StoreError::NoSample(999))));

    let r2 = hub.send(Action::Capture(ClassRef::Name("nope".into())), Source::Mqtt);
    let r3 = hub.send(Action::AddClass("cup".into()), Source::Http);
    run_until(&mut shell, 150);
    assert!(matches!(outcome(r2), Some(Event::CaptureRefused { .. })));
    assert!(matches!(outcome(r3), Some(Event::ClassAdded { .. })));
    let list = hub.samples().unwrap();
    assert_eq!(list.classes, ["ball", "block", "cup"]);
    assert_eq!(list.samples, vec![sample.clone()]);

    run_until(&mut shell, 1200);
    let status = hub.status().expect("a status snapshot");
    assert_eq!(status.samples_per_class["block"], 1);
    assert!(status.fps > 5.0 && status.head.is_some(), "{status:?}");

    let r4 = hub.send(Action::DeleteSamples(vec![sample.id]), Source::Http);
    run_until(&mut shell, 1300);
    assert!(matches!(outcome(r4), Some(Event::SamplesDeleted { .. })));
    assert!(hub.samples().unwrap().samples.is_empty());
    assert!(hub.thumbnail(sample.id).is_err());
}
