//! The shell's observer API: how other threads (the status writer today, a web console and
//! MQTT next) see and drive the appliance without touching the loop, the store or the model.
//!
//! - [`Hub::subscribe`]: every [`Event`] the core publishes, on a bounded queue of your own
//!   (a slow reader loses the oldest and is told how many).
//! - [`Hub::latest_frame`] / [`Hub::wait_frame`]: the newest frame, newest-only (the loop
//!   never waits for a viewer; encode JPEGs on the viewer's thread).
//! - [`Hub::status`], [`Hub::samples`]: cheap snapshots (an `Arc`), refreshed by the loop.
//! - [`Hub::thumbnail`]: a sample's stored thumbnail, checked against its record's checksum.
//! - [`Hub::stage_histograms`]: per-stage latency histograms of every embedded frame.
//! - [`Hub::send`]: an [`Action`], the same type buttons produce; returns the request id that
//!   the outcome events carry (`CaptureSaved`, `CaptureRefused`, `ActionRefused`, ...).
//! - [`Hub::set_link`] / [`Hub::links`]: an observer's own health (MQTT: connected, why
//!   not), shown in the status file under `links`.
//! - [`Hub::want_heatmap`] / [`Hub::heatmap`]: ask for class-activation maps of the next
//!   frames (a viewer renews the wish; it lapses after [`HEATMAP_WISH`]) and read the newest.
//! - [`Hub::head`]: the live head (for work on an observer's own thread, e.g. a dream).
//! - [`Hub::reserve_ids`] / [`Hub::send_import`]: add samples verified and staged on an
//!   observer's thread (the web console's upload); the loop only commits them.
//!
//! Must not: block the loop. Invariant: every lock here is held for one push or pop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::{Bus, Latest, Subscription};
use crate::frame::Frame;
use crate::head::Head;
use crate::session::{Action, Event, RequestId, Source, Stages, Status};
use crate::store::{Batch, IdReserver, SampleInfo, StoreError};

/// An action on its way to the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What.
    pub action: Action,
    /// From where.
    pub source: Source,
    /// The requester's id, if it wants to match the outcome.
    pub request: Option<RequestId>,
    /// When it happened on the loop's clock (the button thread knows); `None`: when the loop
    /// receives it.
    pub at_ms: Option<u64>,
}

/// The class list and the samples, as observers see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleList {
    /// Class names, in button order.
    pub classes: Vec<String>,
    /// Samples, oldest first.
    pub samples: Vec<SampleInfo>,
}

/// Upper bounds of the per-stage latency histogram buckets, microseconds (the last is +Inf).
pub const STAGE_BUCKETS_US: [u64; 12] = [
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    1_000_000,
    u64::MAX,
];

/// Per-stage latency histograms of every embedded frame (lock-free: the loop only adds).
#[derive(Debug, Default)]
pub struct StageHistograms {
    counts: [[AtomicU64; STAGE_BUCKETS_US.len()]; 4],
    sums_us: [AtomicU64; 4],
}

impl StageHistograms {
    /// Count one frame's stages (decode, preprocess, backbone, head).
    pub fn record(&self, s: &Stages) {
        let times = [s.decode_us, s.preprocess_us, s.backbone_us, s.head_us];
        for (k, us) in times.into_iter().enumerate() {
            let b = STAGE_BUCKETS_US
                .iter()
                .position(|&hi| us <= hi)
                .unwrap_or(11);
            self.counts[k][b].fetch_add(1, Ordering::Relaxed);
            self.sums_us[k].fetch_add(us, Ordering::Relaxed);
        }
    }

    /// Per stage: the count in each bucket (not cumulative) and the sum, microseconds.
    pub fn snapshot(&self) -> [([u64; STAGE_BUCKETS_US.len()], u64); 4] {
        std::array::from_fn(|k| {
            let counts = std::array::from_fn(|b| self.counts[k][b].load(Ordering::Relaxed));
            (counts, self.sums_us[k].load(Ordering::Relaxed))
        })
    }
}

/// How long one [`Hub::want_heatmap`] keeps maps coming (a viewer polls more often).
pub const HEATMAP_WISH: Duration = Duration::from_secs(3);

/// A class-activation map of one frame: where the class's score came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeatMap {
    /// Version of the frame it belongs to ([`Hub::latest_frame`]'s).
    pub frame: u64,
    /// The class mapped (the predicted one unless another was asked for).
    pub class: String,
    /// Its position in the class list.
    pub class_index: usize,
    /// Rows of the map (the last feature map's: 7 at 224).
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Each position's share of the class logit minus its bias, row-major.
    pub values: Vec<f32>,
    /// The class logit (`Σ values + bias`).
    pub logit: f32,
    /// The head's bias for the class.
    pub bias: f32,
    /// The square of the frame the map covers (what the model saw): left, top, side, pixels.
    pub crop: [f32; 3],
}

/// Shared between the loop and its observers (cheap to clone as `Arc<Hub>`).
pub struct Hub {
    pub(super) bus: Bus<Event>,
    pub(super) frame: Latest<Frame>,
    pub(super) heat: Latest<HeatMap>,
    pub(super) status: Latest<Status>,
    pub(super) samples: Latest<SampleList>,
    pub(super) stages: StageHistograms,
    actions: Sender<Command>,
    next_request: AtomicU64,
    state_dir: PathBuf,
    links: Mutex<BTreeMap<&'static str, serde_json::Value>>,
    head: Mutex<Option<Arc<Head>>>,
    born: Instant,
    /// Heat maps are wanted until this many ms after `born` (0: not wanted).
    heat_until_ms: AtomicU64,
    /// The class a viewer asked to map, plus one (0: the predicted class).
    heat_class: AtomicU64,
    /// The store's id counter (set by the loop once the store is open).
    ids: Mutex<Option<IdReserver>>,
    /// A staged import on its way to the loop, with its request id.
    import: Mutex<Option<(RequestId, Batch)>>,
    /// The inbox of unsure frames, when the appliance keeps one.
    inbox: Mutex<Option<Arc<crate::inbox::Inbox>>>,
}

impl Hub {
    /// A hub for the state directory `state_dir`, and the receiving end of its actions (for
    /// the loop).
    pub fn new(state_dir: PathBuf) -> (Arc<Hub>, Receiver<Command>) {
        let (tx, rx) = channel();
        let hub = Hub {
            bus: Bus::new(),
            frame: Latest::new(),
            status: Latest::new(),
            samples: Latest::new(),
            stages: StageHistograms::default(),
            actions: tx,
            next_request: AtomicU64::new(1),
            state_dir,
            links: Mutex::new(BTreeMap::new()),
            head: Mutex::new(None),
            born: Instant::now(),
            heat_until_ms: AtomicU64::new(0),
            heat_class: AtomicU64::new(0),
            heat: Latest::new(),
            ids: Mutex::new(None),
            import: Mutex::new(None),
            inbox: Mutex::new(None),
        };
        (Arc::new(hub), rx)
    }

    /// Share the inbox of unsure frames with observers (the loop sets it once at start).
    pub fn set_inbox(&self, inbox: Arc<crate::inbox::Inbox>) {
        *self.inbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(inbox);
    }

    /// The inbox of unsure frames (`None`: the appliance keeps none).
    pub fn inbox(&self) -> Option<Arc<crate::inbox::Inbox>> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every event from now on, keeping at most `capacity` unread.
    pub fn subscribe(&self, capacity: usize) -> Subscription<Event> {
        self.bus.subscribe(capacity)
    }

    /// The newest frame and its version.
    pub fn latest_frame(&self) -> Option<(u64, Arc<Frame>)> {
        self.frame.get()
    }

    /// Wait up to `timeout` for a frame newer than version `seen`.
    pub fn wait_frame(&self, seen: u64, timeout: Duration) -> Option<(u64, Arc<Frame>)> {
        self.frame.wait_newer(seen, timeout)
    }

    /// The latest status snapshot (about once a second).
    pub fn status(&self) -> Option<Arc<Status>> {
        self.status.get().map(|(_, s)| s)
    }

    /// The classes and samples as of the latest change.
    pub fn samples(&self) -> Option<Arc<SampleList>> {
        self.samples.get().map(|(_, s)| s)
    }

    /// The thumbnail of sample `id` (JPEG), read from the state directory and checked.
    pub fn thumbnail(&self, id: u64) -> Result<Vec<u8>, StoreError> {
        let list = self.samples().unwrap_or_default();
        let s = list
            .samples
            .iter()
            .find(|s| s.id == id)
            .ok_or(StoreError::NoSample(id))?;
        crate::store::read_thumbnail(&self.state_dir, id, &s.thumb_sha256)
    }

    /// Send `action` from `source` to the loop; returns the request id its events carry.
    /// Never blocks (the loop takes it at its next poll); after the loop stopped, the action
    /// is dropped and no event will come.
    pub fn send(&self, action: Action, source: Source) -> RequestId {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let _ = self.actions.send(Command {
            action,
            source,
            request: Some(request),
            at_ms: None,
        });
        request
    }

    /// `n` sample ids for a batch staged on an observer's thread (`None` before the loop
    /// opened the store).
    pub fn reserve_ids(&self, n: u64) -> Option<std::ops::Range<u64>> {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.as_ref().map(|r| r.reserve(n))
    }

    pub(super) fn set_id_reserver(&self, ids: IdReserver) {
        *self.ids.lock().unwrap_or_else(|p| p.into_inner()) = Some(ids);
    }

    /// Hand a staged batch to the loop as [`Action::Import`] from `source`; the request id
    /// its outcome (`Imported` or `ActionRefused`) carries. One import at a time: a batch
    /// still waiting is replaced (and its files removed).
    pub fn send_import(&self, batch: Batch, source: Source) -> RequestId {
        let samples = batch.infos();
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        *self.import.lock().unwrap_or_else(|p| p.into_inner()) = Some((request, batch));
        let _ = self.actions.send(Command {
            action: Action::Import(samples),
            source,
            request: Some(request),
            at_ms: None,
        });
        request
    }

    /// Drop the staged batch of import request `request` (its files are removed) if the loop
    /// has not taken it: for an import the core refused.
    pub fn drop_import(&self, request: RequestId) {
        drop(self.take_import(Some(request)));
    }

    /// The staged batch of import request `request`, if it is still waiting.
    pub(super) fn take_import(&self, request: Option<RequestId>) -> Option<Batch> {
        let mut slot = self.import.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some((r, b)) if Some(r) == request => Some(b),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Per-stage latency histograms of the frames embedded so far.
    pub fn stage_histograms(&self) -> [([u64; STAGE_BUCKETS_US.len()], u64); 4] {
        self.stages.snapshot()
    }

    /// Record the health of the observer `name` (e.g. `"mqtt"`); replaces the previous one.
    pub fn set_link(&self, name: &'static str, health: serde_json::Value) {
        // A poisoned lock only means a writer panicked mid-insert of a plain map: still usable.
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.insert(name, health);
    }

    /// Every observer's recorded health, by name.
    pub fn links(&self) -> BTreeMap<&'static str, serde_json::Value> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ask the loop for class-activation maps of the frames of the next [`HEATMAP_WISH`], of
    /// class `class` (`None`: whatever it predicts). Costs the loop one more read of the
    /// feature map per frame and a 1280-long dot product per position, only while wanted.
    pub fn want_heatmap(&self, class: Option<usize>) {
        let until = (self.born.elapsed() + HEATMAP_WISH).as_millis() as u64;
        self.heat_until_ms.store(until, Ordering::Relaxed);
        self.heat_class
            .store(class.map_or(0, |k| k as u64 + 1), Ordering::Relaxed);
    }

    /// Whether a viewer wants maps now, and of which class (`Some(None)`: the predicted one).
    pub(super) fn heatmap_wanted(&self) -> Option<Option<usize>> {
        let now = self.born.elapsed().as_millis() as u64;
        (now < self.heat_until_ms.load(Ordering::Relaxed)).then(|| {
            match self.heat_class.load(Ordering::Relaxed) {
                0 => None,
                k => Some(k as usize - 1),
            }
        })
    }

    /// The newest class-activation map (see [`Hub::want_heatmap`]).
    pub fn heatmap(&self) -> Option<Arc<HeatMap>> {
        self.heat.get().map(|(_, m)| m)
    }

    /// The head the loop classifies with now.
    pub fn head(&self) -> Option<Arc<Head>> {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_head(&self, head: Option<Arc<Head>>) {
        *self.head.lock().unwrap_or_else(|p| p.into_inner()) = head;
    }

    /// A sender for a thread that produces actions of its own (the button thread).
    pub fn sender(&self) -> Sender<Command> {
        self.actions.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heatmap_wish_names_its_class_and_lapses() {
        let (hub, _rx) = Hub::new(PathBuf::from("/nonexistent"));
        assert_eq!(hub.heatmap_wanted(), None);
        hub.want_heatmap(Some(2));
        assert_eq!(hub.heatmap_wanted(), Some(Some(2)));
        hub.want_heatmap(None);
        assert_eq!(hub.heatmap_wanted(), Some(None));
        // Lapsed: as if the wish had been made HEATMAP_WISH ago.
        hub.heat_until_ms
            .store(hub.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(hub.heatmap_wanted(), None);
    }

    #[test]
    fn stage_histograms_put_each_time_in_its_bucket() {
        let h = StageHistograms::default();
        let s = Stages {
            decode_us: 100,
            preprocess_us: 600,
            backbone_us: 30_000,
            head_us: 5_000_000,
        };
        h.record(&s);
        h.record(&s);
        let snap = h.snapshot();
        assert_eq!(snap[0].0[0], 2);
        assert_eq!(snap[1].0[2], 2);
        assert_eq!(snap[2].0[7], 2);
        assert_eq!(snap[3].0[11], 2);
        assert_eq!(snap[2].1, 60_000);
    }
}
