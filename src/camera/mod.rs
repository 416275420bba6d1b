//! Frame sources behind one small trait, chosen at run time by a typed [`CameraSpec`]
//! (parsed once, from the config or the command line).
//!
//! Implemented: `v4l2:/dev/videoN` (USB webcams through nokhwa, see [`v4l2`]), `rpicam`,
//! `gst:PIPELINE` and `cmd:COMMAND` (child processes writing MJPEG, see [`pipe`]),
//! `dir:PATH` (replay image files in name order, looping, at a set rate) and `synthetic`
//! (generated scenes whose object kind changes on a fixed schedule, for demos and tests).
//! [`fault::FaultInjector`] wraps any source and injects drops, torn frames, error bursts and
//! stalls, seeded, for testing the appliance's survival policy.
//! Time is passed in; a source never sleeps: it returns `Ok(None)` when no new frame is due.
//! Pacing ([`Pace`]) and restart backoff ([`Backoff`]) are computed from that time, once.
//! Must not: preprocess or embed.

pub mod fault;
pub mod pipe;
pub mod v4l2;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::frame::Frame;
use crate::imagefolder;
use crate::rng::Rng;

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// The URI is not understood.
    #[error(
        "unknown camera {0:?}; use v4l2:/dev/videoN, rpicam, gst:PIPELINE, cmd:COMMAND, dir:PATH or synthetic[:PHASE_MS]"
    )]
    UnknownUri(String),
    /// This binary was built without board support.
    #[error(
        "camera {0:?} is not in this build (built without the `hw` feature); rebuild with default features"
    )]
    NotBuilt(String),
    /// A replay folder has no images.
    #[error("camera folder {0} has no .jpg/.png images")]
    EmptyDir(PathBuf),
    /// Reading a frame failed.
    #[error("camera {source_name}: {message}")]
    Read {
        /// Which source.
        source_name: String,
        /// What went wrong.
        message: String,
    },
}

/// A source of frames.
pub trait FrameSource: Send {
    /// Human-readable description for logs.
    fn describe(&self) -> String;
    /// The next frame if one is due at `now_ms`, else `None`.
    fn poll(&mut self, now_ms: u64) -> Result<Option<Frame>, CameraError>;
}

impl<T: FrameSource + ?Sized> FrameSource for Box<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn poll(&mut self, now_ms: u64) -> Result<Option<Frame>, CameraError> {
        (**self).poll(now_ms)
    }
}

/// Scene period of `synthetic` without an explicit one, ms.
pub const SYNTHETIC_PHASE_MS: u64 = 3000;

/// Which camera to open: the parsed form of a camera URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraSpec {
    /// `v4l2:/dev/videoN`: a USB webcam.
    V4l2 {
        /// The device path as given.
        device: String,
        /// Its index N.
        index: u32,
    },
    /// `rpicam`: libcamera's `rpicam-vid` (Pi CSI cameras).
    Rpicam,
    /// `gst:PIPELINE`: a GStreamer pipeline.
    Gst(String),
    /// `cmd:COMMAND`: any command writing MJPEG to stdout.
    Cmd(String),
    /// `dir:PATH`: replay the images of a folder.
    Dir(PathBuf),
    /// `synthetic[:PHASE_MS]`: generated scenes, a new kind every `phase_ms`.
    Synthetic {
        /// Scene period, ms.
        phase_ms: u64,
    },
}

impl Default for CameraSpec {
    fn default() -> Self {
        CameraSpec::Synthetic {
            phase_ms: SYNTHETIC_PHASE_MS,
        }
    }
}

impl FromStr for CameraSpec {
    type Err = CameraError;

    fn from_str(uri: &str) -> Result<Self, CameraError> {
        let unknown = || CameraError::UnknownUri(uri.to_string());
        let non_empty = |r: &str| (!r.is_empty()).then(|| r.to_string()).ok_or_else(unknown);
        if let Some(dev) = uri.strip_prefix("v4l2:") {
            let index = v4l2::device_index(dev)?;
            return Ok(CameraSpec::V4l2 {
                device: dev.to_string(),
                index,
            });
        }
        if let Some(p) = uri.strip_prefix("gst:") {
            return non_empty(p).map(CameraSpec::Gst);
        }
        if let Some(c) = uri.strip_prefix("cmd:") {
            return non_empty(c).map(CameraSpec::Cmd);
        }
        if let Some(d) = uri.strip_prefix("dir:") {
            return non_empty(d).map(|d| CameraSpec::Dir(PathBuf::from(d)));
        }
        if let Some(phase) = uri.strip_prefix("synthetic:") {
            let phase_ms = phase
                .parse::<u64>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(unknown)?;
            return Ok(CameraSpec::Synthetic { phase_ms });
        }
        match uri {
            "rpicam" => Ok(CameraSpec::Rpicam),
            "synthetic" => Ok(CameraSpec::default()),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for CameraSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraSpec::V4l2 { device, .. } => write!(f, "v4l2:{device}"),
            CameraSpec::Rpicam => f.write_str("rpicam"),
            CameraSpec::Gst(p) => write!(f, "gst:{p}"),
            CameraSpec::Cmd(c) => write!(f, "cmd:{c}"),
            CameraSpec::Dir(d) => write!(f, "dir:{}", d.display()),
            CameraSpec::Synthetic { phase_ms } => write!(f, "synthetic:{phase_ms}"),
        }
    }
}

/// How to open a source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Frames per second to take (0 = as fast as the source gives them).
    pub fps: f64,
    /// Capture size asked of real cameras (the closest native mode is used).
    pub width: u32,
    /// See `width`.
    pub height: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fps: 10.0,
            width: 640,
            height: 480,
        }
    }
}

impl Options {
    /// Milliseconds between frames (0 = as fast as possible).
    pub fn period_ms(&self) -> u64 {
        if self.fps > 0.0 {
            (1000.0 / self.fps) as u64
        } else {
            0
        }
    }
}

/// Open the source `spec` describes.
pub fn open(spec: &CameraSpec, opts: &Options) -> Result<Box<dyn FrameSource>, CameraError> {
    let period = opts.period_ms();
    Ok(match spec {
        #[cfg(all(feature = "hw", target_os = "linux"))]
        CameraSpec::V4l2 { device, .. } => {
            let ask = if opts.fps > 0.0 {
                opts.fps.ceil() as u32
            } else {
                30
            };
            Box::new(v4l2::V4l2Source::new(
                device,
                (opts.width, opts.height),
                ask,
                period,
            )?)
        }
        #[cfg(not(all(feature = "hw", target_os = "linux")))]
        CameraSpec::V4l2 { .. } => return Err(CameraError::NotBuilt(spec.to_string())),
        CameraSpec::Dir(path) => Box::new(DirSource::new(path, period)?),
        CameraSpec::Synthetic { phase_ms } => Box::new(Synthetic::new(period, *phase_ms)),
        CameraSpec::Rpicam => Box::new(pipe::PipeSource::rpicam(period, opts.width, opts.height)),
        CameraSpec::Gst(p) => Box::new(pipe::PipeSource::gst(p, period)),
        CameraSpec::Cmd(c) => Box::new(pipe::PipeSource::command(c, period)),
    })
}

/// Frame pacing shared by every source: at most one frame per `period_ms` (0 = no limit).
#[derive(Debug, Clone)]
pub struct Pace {
    period_ms: u64,
    next_ms: u64,
}

impl Pace {
    /// One frame per `period_ms`, the first at once.
    pub fn new(period_ms: u64) -> Self {
        Pace {
            period_ms,
            next_ms: 0,
        }
    }

    /// Whether a frame may be taken at `now_ms`.
    pub fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.next_ms
    }

    /// A frame was taken at `now_ms`: the next one is due a period later.
    pub fn took(&mut self, now_ms: u64) {
        self.next_ms = now_ms + self.period_ms;
    }

    /// [`Pace::ready`], and if so [`Pace::took`]: for sources that always have a frame.
    pub fn due(&mut self, now_ms: u64) -> bool {
        let ready = self.ready(now_ms);
        if ready {
            self.took(now_ms);
        }
        ready
    }
}

/// Restart backoff: 1 s after a failure, doubling to 30 s, back to 1 s after a success.
/// Computed from the time passed in, so it is tested without waiting.
#[derive(Debug, Clone)]
pub struct Backoff {
    delay_ms: u64,
    retry_at_ms: Option<u64>,
}

impl Backoff {
    /// First delay after a failure, ms.
    pub const MIN_MS: u64 = 1000;
    /// Longest delay, ms.
    pub const MAX_MS: u64 = 30_000;

    /// A backoff that allows an attempt at once.
    pub fn new() -> Self {
        Backoff {
            delay_ms: Self::MIN_MS,
            retry_at_ms: Some(0),
        }
    }

    /// Whether an attempt is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.retry_at_ms.is_some_and(|t| now_ms >= t)
    }

    /// An attempt failed (or the thing stopped) at `now_ms`; returns the delay until the next.
    pub fn failed(&mut self, now_ms: u64) -> u64 {
        let d = self.delay_ms;
        self.retry_at_ms = Some(now_ms + d);
        self.delay_ms = (d * 2).min(Self::MAX_MS);
        d
    }

    /// An attempt succeeded: no retry pending, and the next failure waits the minimum again
    /// only after [`Backoff::reset`] (a source that keeps dying keeps backing off).
    pub fn succeeded(&mut self) {
        self.retry_at_ms = None;
    }

    /// The thing ran well: the next failure starts from the minimum delay.
    pub fn reset(&mut self) {
        self.delay_ms = Self::MIN_MS;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Replays the images of a folder (recursively, sorted, see [`imagefolder::walk_images`]),
/// looping.
pub struct DirSource {
    files: Vec<PathBuf>,
    pos: usize,
    pace: Pace,
    root: PathBuf,
}

impl DirSource {
    /// Source over `root`, one frame every `period_ms`.
    pub fn new(root: &Path, period_ms: u64) -> Result<Self, CameraError> {
        // Bounded, and never through a link to a folder: a link cycle would loop forever.
        let (files, _skipped) = imagefolder::walk_images(root).map_err(|e| CameraError::Read {
            source_name: format!("dir:{}", root.display()),
            message: e.to_string(),
        })?;
        if files.is_empty() {
            return Err(CameraError::EmptyDir(root.to_path_buf()));
        }
        Ok(DirSource {
            files,
            pos: 0,
            pace: Pace::new(period_ms),
            root: root.to_path_buf(),
        })
    }
}

impl FrameSource for DirSource {
    fn describe(&self) -> String {
        format!("dir:{} ({} images)", self.root.display(), self.files.len())
    }

    fn poll(&mut self, now_ms: u64) -> Result<Option<Frame>, CameraError> {
        if !self.pace.due(now_ms) {
            return Ok(None);
        }
        // Skip unreadable files (reported) rather than stopping the stream.
        for _ in 0..self.files.len() {
            let p = self.files[self.pos].clone();
            self.pos = (self.pos + 1) % self.files.len();
            match imagefolder::load_rgb(&p) {
                Ok(frame) => return Ok(Some(frame)),
                Err(e) => log::warn!("skipping frame {}: {e}", p.display()),
            }
        }
        Err(CameraError::Read {
            source_name: self.describe(),
            message: "no image could be decoded".into(),
        })
    }
}

/// Generated scenes: the object kind (ball, block, ring) advances every `phase_ms`.
pub struct Synthetic {
    pace: Pace,
    phase_ms: u64,
    rng: Rng,
}

impl Synthetic {
    /// Source with one frame every `period_ms` and a new kind every `phase_ms`.
    pub fn new(period_ms: u64, phase_ms: u64) -> Self {
        Synthetic {
            pace: Pace::new(period_ms),
            phase_ms: phase_ms.max(1),
            rng: Rng::new(42),
        }
    }

    /// The kind shown at `now_ms`.
    pub fn kind_at(&self, now_ms: u64) -> usize {
        ((now_ms / self.phase_ms) % crate::demo::KINDS.len() as u64) as usize
    }
}

impl FrameSource for Synthetic {
    fn describe(&self) -> String {
        format!("synthetic (object changes every {} ms)", self.phase_ms)
    }

    fn poll(&mut self, now_ms: u64) -> Result<Option<Frame>, CameraError> {
        if !self.pace.due(now_ms) {
            return Ok(None);
        }
        let kind = self.kind_at(now_ms);
        let (w, h) = (160, 120);
        let rgb = crate::demo::render(kind, w, h, &mut self.rng);
        Ok(Some(Frame {
            width: w,
            height: h,
            rgb,
            tag: crate::demo::KINDS[kind].to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_paces_frames_and_changes_kind_on_schedule() {
        let mut s = open(
            &"synthetic:1000".parse().unwrap(),
            &Options {
                fps: 10.0,
                ..Options::default()
            },
        )
        .unwrap();
        let f = s.poll(0).unwrap().unwrap();
        assert_eq!(f.tag, "ball");
        assert!(
            s.poll(50).unwrap().is_none(),
            "10 fps: nothing due 50 ms later"
        );
        assert_eq!(s.poll(1100).unwrap().unwrap().tag, "block");
        assert_eq!(s.poll(2100).unwrap().unwrap().tag, "ring");
    }

    #[test]
    fn dir_source_loops_and_skips_broken_files() {
        let d = tempfile::tempdir().unwrap();
        crate::demo::write_dataset(d.path(), 1, 0, 0).unwrap();
        std::fs::write(d.path().join("train/ball/zzz.jpg"), b"broken").unwrap();
        let mut s = open(
            &format!("dir:{}", d.path().display()).parse().unwrap(),
            &Options {
                fps: 0.0,
                ..Options::default()
            },
        )
        .unwrap();
        let tags: Vec<String> = (0..4).map(|t| s.poll(t).unwrap().unwrap().tag).collect();
        assert!(tags[0].ends_with("ball/000.jpg"));
        assert!(
            tags[1].ends_with("block/000.jpg"),
            "broken file skipped: {tags:?}"
        );
        assert!(tags[3].ends_with("ball/000.jpg"), "loops: {tags:?}");
    }

    #[test]
    fn camera_uris_parse_once_into_specs_and_print_back() {
        for uri in [
            "v4l2:/dev/video2",
            "rpicam",
            "gst:videotestsrc ! video/x-raw",
            "cmd:cat a.mjpeg",
            "dir:/data/imgs",
            "synthetic:1500",
        ] {
            let spec: CameraSpec = uri.parse().unwrap();
            assert_eq!(spec.to_string(), uri);
        }
        assert_eq!(
            "synthetic".parse::<CameraSpec>().unwrap(),
            CameraSpec::default()
        );
        for bad in [
            "webcam",
            "v4l2:/dev/webcam",
            "dir:",
            "cmd:",
            "synthetic:0",
            "synthetic:x",
        ] {
            assert!(
                matches!(bad.parse::<CameraSpec>(), Err(CameraError::UnknownUri(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn pacing_and_backoff_follow_the_time_passed_in() {
        let mut p = Pace::new(100);
        assert!(p.due(0) && !p.due(50) && p.due(100) && !p.due(199) && p.due(230));
        assert!(!p.ready(329) && p.ready(330));
        let mut b = Backoff::new();
        assert!(b.due(0));
        assert_eq!(b.failed(10), 1000);
        assert!(!b.due(1009) && b.due(1010));
        assert_eq!(b.failed(1010), 2000);
        for _ in 0..10 {
            b.failed(5000);
        }
        assert_eq!(b.failed(5000), Backoff::MAX_MS, "capped");
        b.succeeded();
        assert!(!b.due(u64::MAX), "nothing to retry after a success");
        b.reset();
        assert_eq!(b.failed(0), Backoff::MIN_MS);
    }

    #[test]
    #[cfg(all(feature = "hw", target_os = "linux"))]
    fn a_missing_webcam_gives_no_frames_and_no_error_while_it_is_retried() {
        // The daemon keeps running while the camera is away; frames arrive once it is back.
        let mut s = open(&"v4l2:/dev/video97".parse().unwrap(), &Options::default()).unwrap();
        for ms in [0, 100, 200] {
            assert!(s.poll(ms).unwrap().is_none());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(s.describe().contains("/dev/video97"));
    }
}
