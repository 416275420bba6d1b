//! The status file (`--status FILE`): a bus subscriber that rewrites the file atomically with
//! every status snapshot the core publishes (about once a second), on its own thread, so a
//! slow disk never slows the loop.
//!
//! Must not: read anything but its subscription.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::observe::Hub;
use crate::bus::{Note, Subscription};
use crate::session::{Event, Status};

/// The JSON written for `status`.
pub fn json(status: &Status) -> Vec<u8> {
    // Plain data: serialisation cannot fail.
    serde_json::to_vec(status).unwrap_or_default()
}

/// The JSON written for `status`, with the observers' health under `links` (when any) and
/// `updated_unix_ms`, the wall-clock time of the write (a reader can tell a stale file).
fn json_with_links(status: &Status, hub: Option<&Hub>) -> Vec<u8> {
    let links = hub.map(Hub::links).unwrap_or_default();
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if !links.is_empty() {
        v["links"] = serde_json::json!(links);
    }
    v["updated_unix_ms"] = serde_json::json!(unix_ms());
    serde_json::to_vec(&v).unwrap_or_default()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Write every status snapshot from `sub` to `path` until the bus is closed (or `stop` is set
/// and nothing is queued), with `hub`'s links. A failed write is logged once per distinct
/// message and retried with the next snapshot.
pub fn write_status(sub: &Subscription<Event>, path: &Path, stop: &AtomicBool, hub: Option<&Hub>) {
    let mut last_error: Option<String> = None;
    loop {
        match sub.next_timeout(Duration::from_millis(200)) {
            Some(Note::Event(Event::Status(st))) => {
                match crate::fsutil::atomic_write(path, &json_with_links(&st, hub)) {
                    Ok(()) => last_error = None,
                    Err(e) => {
                        let msg = e.to_string();
                        if last_error.as_deref() != Some(msg.as_str()) {
                            log::warn!("cannot write status {}: {msg}", path.display());
                            last_error = Some(msg);
                        }
                    }
                }
            }
            // Older snapshots dropped while the disk was slow: the next one supersedes them.
            Some(_) => {}
            None if sub.is_finished() || stop.load(Ordering::Relaxed) => return,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::session::{Session, SessionConfig};
    use std::sync::Arc;

    #[test]
    fn the_writer_keeps_the_newest_snapshot_on_disk_and_stops_when_the_bus_closes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("status.json");
        let bus = Bus::new();
        let sub = bus.subscribe(4);
        let s = Session::new(
            SessionConfig::default(),
            0,
            vec!["cup".into(), "pen".into()],
            Vec::new(),
            None,
        );
        bus.publish(Event::Status(Arc::new(s.status(1000))));
        bus.publish(Event::Status(Arc::new(s.status(7000))));
        bus.close();
        let stop = AtomicBool::new(false);
        write_status(&sub, &path, &stop, None);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["uptime_s"], 7);
        let written = v["updated_unix_ms"].as_u64().unwrap();
        assert!(unix_ms().abs_diff(written) < 60_000, "{written}");
        assert_eq!(v["class"], "unknown");
        assert_eq!(v["samples_per_class"]["pen"], 0);
        for key in [
            "fps",
            "frames",
            "head_version",
            "stages",
            "errors",
            "camera",
            "classes",
        ] {
            assert!(v.get(key).is_some(), "status has {key}: {v}");
        }
    }
}
