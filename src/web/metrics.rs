//! What the console reports about the appliance: event counters, `/metrics` (Prometheus
//! text), the health summary and `teachcam doctor`'s checks (cached for
//! [`DOCTOR_FRESH`]), process memory and free disk.
//!
//! Must not: change anything.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::Response;
use super::{Shared, lower_priority};
use crate::bus::{Note, Subscription};
use crate::daemon::observe::STAGE_BUCKETS_US;
use crate::session::{Event, FineTuneResult};

/// Counts of events since start (for `/metrics`).
#[derive(Debug, Default)]
pub(super) struct Counters {
    captures_saved: AtomicU64,
    captures_refused: AtomicU64,
    fine_tunes: [AtomicU64; 4],
    head_swaps: AtomicU64,
    camera_lost: AtomicU64,
    camera_back: AtomicU64,
    actions_refused: AtomicU64,
    events_lost: AtomicU64,
}

pub(super) fn count_events(sub: &Subscription<Event>, c: &Counters) {
    let add = |a: &AtomicU64, n: u64| {
        a.fetch_add(n, Ordering::Relaxed);
    };
    loop {
        match sub.next_timeout(Duration::from_secs(1)) {
            Some(Note::Lost(n)) => add(&c.events_lost, n),
            Some(Note::Event(e)) => match e {
                Event::CaptureSaved { .. } => add(&c.captures_saved, 1),
                Event::CaptureRefused { .. } => add(&c.captures_refused, 1),
                Event::HeadSwapped { .. } => add(&c.head_swaps, 1),
                Event::CameraLost { .. } => add(&c.camera_lost, 1),
                Event::CameraBack { .. } => add(&c.camera_back, 1),
                Event::ActionRefused { .. } => add(&c.actions_refused, 1),
                Event::FineTuneFinished { result, .. } => {
                    let k = match result {
                        FineTuneResult::Swapped { .. } => 0,
                        FineTuneResult::KeptOut { .. } => 1,
                        FineTuneResult::Stale => 2,
                        FineTuneResult::Failed { .. } => 3,
                    };
                    add(&c.fine_tunes[k], 1);
                }
                _ => {}
            },
            None if sub.is_finished() => return,
            None => {}
        }
    }
}

/// Resident memory of this process, bytes (`VmRSS` of `/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes free for unprivileged users on the file system holding `dir`.
pub fn disk_free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` points to writable
    // memory of the right type; it is read only when the call reports success (0).
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The fields are 32-bit on armv7: the casts are not no-ops everywhere.
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

pub(super) fn health(s: &Shared) -> Value {
    let st = s.hub.status();
    json!({
        "version": s.info.version,
        "uptime_s": s.started.elapsed().as_secs(),
        "loop_uptime_s": st.as_ref().map(|st| st.uptime_s),
        "camera": st.as_ref().map(|st| json!(st.camera)),
        "camera_source": s.info.camera,
        "model": s.info.model,
        "state_dir": s.info.state_dir,
        "rss_bytes": rss_bytes(),
        "disk_free_bytes": disk_free_bytes(&s.info.state_dir),
        "errors": st.as_ref().map(|st| json!(st.errors)),
        "last_error": st.as_ref().and_then(|st| st.last_error.clone()),
        "http": {
            "connections": s.connections.load(Ordering::Relaxed),
            "streams": s.streams.load(Ordering::Relaxed),
            "max_connections": s.limits.max_connections,
            "max_streams": s.limits.max_streams,
        },
    })
}

/// How long a doctor report is reused (its model check loads the model again).
pub const DOCTOR_FRESH: Duration = Duration::from_secs(30);

/// `GET /api/doctor`: what `teachcam doctor` says on this device with this run's
/// configuration (made at a lower priority, at most once per [`DOCTOR_FRESH`]; a request
/// while one is made waits for it). The login token in its console check is not repeated.
pub(super) fn doctor(s: &Shared) -> Response {
    let Some(config) = s.info.config.clone() else {
        return Response::error(503, "this console was started without its configuration");
    };
    let mut cached = s.doctor.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, report)) = cached.as_ref()
        && at.elapsed() < DOCTOR_FRESH
    {
        return Response::json(200, report);
    }
    lower_priority();
    let report = crate::doctor::diagnose(Ok(config));
    let mut v = json!(&report);
    let token = s.auth.token();
    if let Some(checks) = v.get_mut("checks").and_then(Value::as_array_mut) {
        for c in checks {
            if let Some(m) = c.get("message").and_then(Value::as_str)
                && m.contains(token)
            {
                c["message"] = json!(m.replace(token, "(the token: see teachcam doctor)"));
            }
        }
    }
    v["failures"] = json!(report.failures());
    *cached = Some((Instant::now(), v.clone()));
    Response::json(200, &v)
}

/// A Prometheus label value with `\`, `"` and line breaks escaped.
pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics` text (Prometheus exposition format 0.0.4).
pub(super) fn metrics(s: &Shared) -> String {
    let mut m = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(
            m,
            "# HELP teachcam_{name} {help}\n# TYPE teachcam_{name} {kind}"
        );
        for (labels, v) in samples {
            let _ = writeln!(m, "teachcam_{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    let c = &s.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    if let Some(st) = s.hub.status() {
        metric(
            "frames_total",
            "counter",
            "Frames through the backbone.",
            &one(st.frames as f64),
        );
        metric(
            "fps",
            "gauge",
            "Frames per second over the last second.",
            &one(st.fps),
        );
        metric(
            "samples",
            "gauge",
            "Samples stored.",
            &one(st.samples as f64),
        );
        metric(
            "inbox_frames",
            "gauge",
            "Frames the appliance was unsure of, waiting to be labelled or dismissed.",
            &one(st.inbox as f64),
        );
        let per: Vec<_> = st
            .samples_per_class
            .iter()
            .map(|(k, v)| (format!("{{class=\"{}\"}}", label(k)), *v as f64))
            .collect();
        metric("class_samples", "gauge", "Samples stored per class.", &per);
        metric(
            "head_version",
            "gauge",
            "Heads made live since start.",
            &one(st.head_version as f64),
        );
        let acc = st.head.as_ref().and_then(|h| h.holdout_accuracy);
        if let Some(a) = acc {
            metric(
                "holdout_accuracy",
                "gauge",
                "The live head's held-out accuracy.",
                &one(a as f64),
            );
        }
        let e = &st.errors;
        let kinds = [
            ("camera", e.camera),
            ("frame", e.frame),
            ("backbone", e.backbone),
            ("store", e.store),
            ("training", e.training),
        ];
        let errs: Vec<_> = kinds
            .iter()
            .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), *v as f64))
            .collect();
        metric(
            "errors_total",
            "counter",
            "Errors inside the loop, by kind.",
            &errs,
        );
        let up = matches!(st.camera, crate::session::CameraState::Live);
        metric(
            "camera_up",
            "gauge",
            "1 while frames arrive.",
            &one(f64::from(u8::from(up))),
        );
        metric(
            "loop_uptime_seconds",
            "gauge",
            "Seconds since the loop started.",
            &one(st.uptime_s as f64),
        );
    }
    let captures = vec![
        ("{result=\"accepted\"}".to_string(), get(&c.captures_saved)),
        ("{result=\"refused\"}".to_string(), get(&c.captures_refused)),
    ];
    metric(
        "captures_total",
        "counter",
        "Captures since the console started.",
        &captures,
    );
    let tunes: Vec<_> = ["swapped", "kept_out", "stale", "failed"]
        .iter()
        .zip(&c.fine_tunes)
        .map(|(k, v)| (format!("{{result=\"{k}\"}}"), get(v)))
        .collect();
    metric(
        "fine_tunes_total",
        "counter",
        "Fine-tunes finished, by result.",
        &tunes,
    );
    metric(
        "head_swaps_total",
        "counter",
        "Heads made live (imprints and fine-tunes).",
        &one(get(&c.head_swaps)),
    );
    metric(
        "camera_lost_total",
        "counter",
        "Times the camera was lost.",
        &one(get(&c.camera_lost)),
    );
    metric(
        "camera_restarts_total",
        "counter",
        "Times frames came back after a loss.",
        &one(get(&c.camera_back)),
    );
    metric(
        "actions_refused_total",
        "counter",
        "Actions the loop refused.",
        &one(get(&c.actions_refused)),
    );
    metric(
        "events_lost_total",
        "counter",
        "Events the metrics reader fell behind on.",
        &one(get(&c.events_lost)),
    );
    // Per-stage latency histograms, from every frame the loop embedded.
    let snap = s.hub.stage_histograms();
    let mut hist = Vec::new();
    for (stage, (counts, sum_us)) in ["decode", "preprocess", "backbone", "head"]
        .iter()
        .zip(&snap)
    {
        let mut cumulative = 0;
        for (bound, n) in STAGE_BUCKETS_US.iter().zip(counts) {
            cumulative += n;
            let le = if *bound == u64::MAX {
                "+Inf".to_string()
            } else {
                format!("{}", *bound as f64 / 1e6)
            };
            hist.push((
                format!("_bucket{{stage=\"{stage}\",le=\"{le}\"}}"),
                cumulative as f64,
            ));
        }
        hist.push((format!("_sum{{stage=\"{stage}\"}}"), *sum_us as f64 / 1e6));
        hist.push((format!("_count{{stage=\"{stage}\"}}"), cumulative as f64));
    }
    metric(
        "stage_seconds",
        "histogram",
        "Time per frame in each stage of the loop.",
        &hist,
    );
    if let Some(rss) = rss_bytes() {
        metric(
            "resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            &one(rss as f64),
        );
    }
    let conns = s.connections.load(Ordering::Relaxed) as f64;
    metric(
        "http_connections",
        "gauge",
        "Web console connections open.",
        &one(conns),
    );
    let streams = s.streams.load(Ordering::Relaxed) as f64;
    metric(
        "http_streams",
        "gauge",
        "Live-view streams open.",
        &one(streams),
    );
    m
}
