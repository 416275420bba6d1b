//! Frame sources behind one small trait, chosen at run time by URI.
//!
//! Implemented: `rpicam`, `gst:PIPELINE` and `cmd:COMMAND` (child processes writing MJPEG,
//! see [`pipe`]), `dir:PATH` (replay image files in name order, looping, at a set rate) and
//! `synthetic` (generated scenes whose object kind changes on a fixed schedule, for demos and
//! tests). `v4l2:` (USB webcams through nokhwa) is not built yet. Time is passed in; a source never sleeps: it returns `Ok(None)` when no new frame
//! is due. Must not: preprocess or embed.

pub mod pipe;

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
        "unknown camera {0:?}; use dir:PATH or synthetic (v4l2:, rpicam and gst: are not built yet)"
    )]
    UnknownUri(String),
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

/// Open a source from its URI, with `fps` frames per second (0 = as fast as asked).
pub fn open(uri: &str, fps: f64) -> Result<Box<dyn FrameSource>, CameraError> {
    let period = if fps > 0.0 { (1000.0 / fps) as u64 } else { 0 };
    if let Some(path) = uri.strip_prefix("dir:") {
        return Ok(Box::new(DirSource::new(Path::new(path), period)?));
    }
    if uri == "synthetic" {
        return Ok(Box::new(Synthetic::new(period, 3000)));
    }
    if uri == "rpicam" {
        return Ok(Box::new(pipe::PipeSource::rpicam(period)));
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

/// Replays the images of a folder (recursively, sorted), looping.
pub struct DirSource {
    files: Vec<PathBuf>,
    pos: usize,
    pace: Pace,
    root: PathBuf,
}

impl DirSource {
    /// Source over `root`, one frame every `period_ms`.
    pub fn new(root: &Path, period_ms: u64) -> Result<Self, CameraError> {
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if imagefolder::is_image(&p) {
                        files.push(p);
                    }
                }
            }
        }
        files.sort();
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
        let mut s = open("synthetic:1000", 10.0).unwrap();
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
        let mut s = open(&format!("dir:{}", d.path().display()), 0.0).unwrap();
        let tags: Vec<String> = (0..4).map(|t| s.poll(t).unwrap().unwrap().tag).collect();
        assert!(tags[0].ends_with("ball/000.jpg"));
        assert!(
            tags[1].ends_with("block/000.jpg"),
            "broken file skipped: {tags:?}"
        );
        assert!(tags[3].ends_with("ball/000.jpg"), "loops: {tags:?}");
        assert!(matches!(
            open("v4l2:/dev/video9", 1.0),
            Err(CameraError::UnknownUri(_))
        ));
    }
}
