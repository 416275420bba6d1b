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
//!
//! Must not: block the loop. Invariant: every lock here is held for one push or pop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bus::{Bus, Latest, Subscription};
use crate::frame::Frame;
use crate::session::{Action, Event, RequestId, Source, Stages, Status};
use crate::store::{SampleInfo, StoreError};

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

/// Shared between the loop and its observers (cheap to clone as `Arc<Hub>`).
pub struct Hub {
    pub(super) bus: Bus<Event>,
    pub(super) frame: Latest<Frame>,
    pub(super) status: Latest<Status>,
    pub(super) samples: Latest<SampleList>,
    pub(super) stages: StageHistograms,
    actions: Sender<Command>,
    next_request: AtomicU64,
    state_dir: PathBuf,
    links: Mutex<BTreeMap<&'static str, serde_json::Value>>,
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
        };
        (Arc::new(hub), rx)
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

    /// A sender for a thread that produces actions of its own (the button thread).
    pub fn sender(&self) -> Sender<Command> {
        self.actions.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
