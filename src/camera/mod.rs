//! Frame sources behind one small trait, chosen at run time by URI.
//!
//! Implemented: `v4l2:/dev/videoN` (USB webcams through nokhwa, see [`v4l2`]), `rpicam`,
//! `gst:PIPELINE` and `cmd:COMMAND` (child processes writing MJPEG, see [`pipe`]),
//! `dir:PATH` (replay image files in name order, looping, at a set rate) and `synthetic`
//! (generated scenes whose object kind changes on a fixed schedule, for demos and tests).
//! Time is passed in; a source never sleeps: it returns `Ok(None)` when no new frame is due.
//! Must not: preprocess or embed.

pub mod pipe;
pub mod v4l2;

use std::path::{Path, PathBuf};

use crate::imagefolder;
use crate::rng::Rng;

/// One RGB frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Packed RGB8.
    pub rgb: Vec<u8>,
    /// What the source knows about the frame (file name, scene kind), for logs and tests.
    pub tag: String,
}

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

/// Check a URI's grammar without opening anything.
pub fn check_uri(uri: &str) -> Result<(), CameraError> {
    if let Some(dev) = uri.strip_prefix("v4l2:") {
        return v4l2::device_index(dev).map(|_| ());
    }
    if let Some(phase) = uri.strip_prefix("synthetic:") {
        return phase
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| CameraError::UnknownUri(uri.to_string()));
    }
    let known = uri == "synthetic"
        || uri == "rpicam"
        || ["dir:", "gst:", "cmd:"]
            .iter()
            .any(|p| uri.strip_prefix(p).is_some_and(|r| !r.is_empty()));
    if known {
        Ok(())
    } else {
        Err(CameraError::UnknownUri(uri.to_string()))
    }
}

/// Open a source from its URI.
pub fn open(uri: &str, opts: &Options) -> Result<Box<dyn FrameSource>, CameraError> {
    let fps = opts.fps;
    let period = if fps > 0.0 { (1000.0 / fps) as u64 } else { 0 };
    if let Some(dev) = uri.strip_prefix("v4l2:") {
        #[cfg(all(feature = "hw", target_os = "linux"))]
        {
            let ask = if fps > 0.0 { fps.ceil() as u32 } else { 30 };
            return Ok(Box::new(v4l2::V4l2Source::new(
                dev,
                (opts.width, opts.height),
                ask,
                period,
            )?));
        }
        #[cfg(not(all(feature = "hw", target_os = "linux")))]
        {
            let _ = v4l2::device_index(dev)?;
            return Err(CameraError::NotBuilt(uri.to_string()));
        }
    }
    if let Some(path) = uri.strip_prefix("dir:") {
        return Ok(Box::new(DirSource::new(Path::new(path), period)?));
    }
    if uri == "synthetic" {
        return Ok(Box::new(Synthetic::new(period, 3000)));
    }
    if uri == "rpicam" {
        return Ok(Box::new(pipe::PipeSource::rpicam(
            period,
            opts.width,
            opts.height,
        )));
    }
    if let Some(p) = uri.strip_prefix("gst:") {
        return Ok(Box::new(pipe::PipeSource::gst(p, period)));
    }
    if let Some(c) = uri.strip_prefix("cmd:") {
        return Ok(Box::new(pipe::PipeSource::command(c, period)));
    }
    if let Some(phase) = uri.strip_prefix("synthetic:") {
        let phase = phase
            .parse()
            .map_err(|_| CameraError::UnknownUri(uri.to_string()))?;
        return Ok(Box::new(Synthetic::new(period, phase)));
    }
    Err(CameraError::UnknownUri(uri.to_string()))
}

/// Longest side of a stored thumbnail, pixels.
pub const THUMB_SIDE: u32 = 160;

/// The JPEG thumbnail (longest side [`THUMB_SIDE`]) stored with each capture.
pub fn thumbnail_jpeg(img: &image::RgbImage) -> std::io::Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    let scale = THUMB_SIDE as f32 / w.max(h) as f32;
    if scale < 1.0 {
        let t = image::imageops::thumbnail(
            img,
            ((w as f32 * scale) as u32).max(1),
            ((h as f32 * scale) as u32).max(1),
        );
        crate::demo::encode_jpeg(&t)
    } else {
        crate::demo::encode_jpeg(img)
    }
}

/// Rate limiter shared by the sources.
#[derive(Debug, Clone)]
struct Pace {
    period: u64,
    next: u64,
}

impl Pace {
    fn due(&mut self, now: u64) -> bool {
        if now < self.next {
            return false;
        }
        self.next = if self.period == 0 {
            now
        } else {
            now.max(self.next) + self.period
        };
        true
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
            pace: Pace {
                period: period_ms,
                next: 0,
            },
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
                Ok(img) => {
                    return Ok(Some(Frame {
                        width: img.width,
                        height: img.height,
                        rgb: img.data,
                        tag: p.display().to_string(),
                    }));
                }
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
            pace: Pace {
                period: period_ms,
                next: 0,
            },
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
            "synthetic:1000",
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
            &format!("dir:{}", d.path().display()),
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
        assert!(matches!(
            open("webcam", &Options::default()),
            Err(CameraError::UnknownUri(_))
        ));
        assert!(matches!(
            open("v4l2:/dev/webcam", &Options::default()),
            Err(CameraError::UnknownUri(_))
        ));
    }

    #[test]
    #[cfg(all(feature = "hw", target_os = "linux"))]
    fn a_missing_webcam_gives_no_frames_and_no_error_while_it_is_retried() {
        // The daemon keeps running while the camera is away; frames arrive once it is back.
        let mut s = open("v4l2:/dev/video97", &Options::default()).unwrap();
        for ms in [0, 100, 200] {
            assert!(s.poll(ms).unwrap().is_none());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(s.describe().contains("/dev/video97"));
    }
}
