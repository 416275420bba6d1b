//! Cameras that are child processes writing an MJPEG stream (concatenated JPEGs) to stdout:
//! `rpicam` (libcamera's `rpicam-vid`, for Pi CSI cameras), `gst:PIPELINE` (GStreamer, for
//! Jetson's `nvarguscamerasrc`), and `cmd:COMMAND` (any shell command, used by the tests).
//!
//! A reader thread splits the byte stream into JPEGs (SOI `FF D8` … EOI `FF D9`; inside the
//! entropy-coded data `FF` is always stuffed, so `FF D9` only ends a frame) and keeps only the
//! newest one in a one-slot mailbox: a slow consumer skips frames instead of queueing them.
//! When the child exits it is restarted with exponential backoff (1 s doubling to 30 s) and
//! the daemon keeps running. Must not: block the caller.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CameraError, Frame, FrameSource};

/// The newest complete JPEG and a counter of frames seen.
#[derive(Default)]
struct Mailbox {
    jpeg: Option<Vec<u8>>,
    frames: u64,
}

/// An MJPEG-over-stdout camera process.
pub struct PipeSource {
    name: String,
    program: String,
    args: Vec<String>,
    child: Option<Child>,
    mailbox: Arc<Mutex<Mailbox>>,
    backoff: Duration,
    retry_at: Option<Instant>,
    period_ms: u64,
    next_ms: u64,
}

impl PipeSource {
    /// A source running `program args…`, named `name` in messages.
    pub fn new(name: &str, program: &str, args: Vec<String>, period_ms: u64) -> Self {
        PipeSource {
            name: name.to_string(),
            program: program.to_string(),
            args,
            child: None,
            mailbox: Arc::new(Mutex::new(Mailbox::default())),
            backoff: Duration::from_secs(1),
            retry_at: Some(Instant::now()),
            period_ms,
            next_ms: 0,
        }
    }

    /// `rpicam-vid` streaming MJPEG at `width`×`height`.
    pub fn rpicam(period_ms: u64, width: u32, height: u32) -> Self {
        let fps = 1000u64.checked_div(period_ms).unwrap_or(30).max(1);
        let args = ["-t", "0", "-n", "--codec", "mjpeg"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--width".into(),
                width.to_string(),
                "--height".into(),
                height.to_string(),
                "--framerate".into(),
                fps.to_string(),
                "-o".into(),
                "-".into(),
            ])
            .collect();
        PipeSource::new("rpicam", "rpicam-vid", args, period_ms)
    }

    /// `gst-launch-1.0 PIPELINE ! jpegenc ! fdsink fd=1` (the tail is added unless the
    /// pipeline already ends in an `fdsink`).
    pub fn gst(pipeline: &str, period_ms: u64) -> Self {
        let mut p = pipeline.trim().to_string();
        if !p.contains("fdsink") {
            p.push_str(" ! jpegenc ! fdsink fd=1");
        }
        let args = std::iter::once("-q".to_string())
            .chain(p.split_whitespace().map(str::to_string))
            .collect();
        PipeSource::new("gst", "gst-launch-1.0", args, period_ms)
    }

    /// `sh -c COMMAND`.
    pub fn command(cmd: &str, period_ms: u64) -> Self {
        PipeSource::new("cmd", "sh", vec!["-c".into(), cmd.into()], period_ms)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e} (is it installed and on PATH?)",
                    self.program
                )
            })?;
        let mut out = child.stdout.take().ok_or("no stdout")?;
        let mailbox = Arc::clone(&self.mailbox);
        std::thread::spawn(move || {
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                let n = match out.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some((start, end)) = next_jpeg(&buf) {
                    if let Ok(mut m) = mailbox.lock() {
                        m.jpeg = Some(buf[start..end].to_vec());
                        m.frames += 1;
                    }
                    buf.drain(..end);
                }
                // A stream that never yields a frame must not grow without bound.
                if buf.len() > 16 << 20 {
                    buf.clear();
                }
            }
        });
        self.child = Some(child);
        Ok(())
    }

    /// Restart a dead child when its backoff has passed.
    fn supervise(&mut self) {
        if let Some(c) = &mut self.child
            && let Ok(Some(status)) = c.try_wait()
        {
            log::warn!(
                "camera {} exited ({status}); restarting in {:?}",
                self.name,
                self.backoff
            );
            self.child = None;
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        }
        if self.child.is_none() && self.retry_at.is_some_and(|t| Instant::now() >= t) {
            match self.spawn() {
                Ok(()) => {
                    log::info!("camera {} started", self.name);
                    self.retry_at = None;
                }
                Err(e) => {
                    log::warn!("camera {}: {e}; retrying in {:?}", self.name, self.backoff);
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Frames the reader has seen so far.
    pub fn frames_seen(&self) -> u64 {
        self.mailbox.lock().map_or(0, |m| m.frames)
    }
}

/// Byte range of the first complete JPEG in `buf`, if any.
pub fn next_jpeg(buf: &[u8]) -> Option<(usize, usize)> {
    let start = buf.windows(2).position(|w| w == [0xFF, 0xD8])?;
    let end = buf[start + 2..]
        .windows(2)
        .position(|w| w == [0xFF, 0xD9])?
        + start
        + 4;
    Some((start, end))
}

impl FrameSource for PipeSource {
    fn describe(&self) -> String {
        format!("{} ({} {})", self.name, self.program, self.args.join(" "))
    }

    fn poll(&mut self, now_ms: u64) -> Result<Option<Frame>, CameraError> {
        self.supervise();
        if now_ms < self.next_ms {
            return Ok(None);
        }
        let Some(jpeg) = self.mailbox.lock().ok().and_then(|mut m| m.jpeg.take()) else {
            return Ok(None);
        };
        self.next_ms = now_ms + self.period_ms;
        // Bounded like every decode: a frame over the pixel limit or cut short is skipped.
        match crate::decode::decode_jpeg(&jpeg) {
            Ok(img) => {
                let (w, h) = img.dimensions();
                Ok(Some(Frame {
                    width: w as usize,
                    height: h as usize,
                    rgb: img.into_raw(),
                    tag: self.name.clone(),
                }))
            }
            Err(e) => {
                log::warn!("camera {}: undecodable frame skipped: {e}", self.name);
                Ok(None)
            }
        }
    }
}

impl Drop for PipeSource {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_byte_stream_into_jpegs() {
        let stream = [
            0u8, 1, 0xFF, 0xD8, 5, 0xFF, 0x00, 6, 0xFF, 0xD9, 0xFF, 0xD8, 7,
        ];
        assert_eq!(next_jpeg(&stream), Some((2, 10)));
        assert_eq!(
            next_jpeg(&stream[10..]),
            None,
            "second frame not complete yet"
        );
    }

    #[test]
    fn reads_frames_from_a_command_and_restarts_it_when_it_exits() {
        let d = tempfile::tempdir().unwrap();
        crate::demo::write_dataset(d.path(), 1, 0, 0).unwrap();
        // Emits three JPEGs, then exits; the source must restart it.
        let cmd = format!("cat {}/train/*/000.jpg", d.path().display());
        let mut s = PipeSource::command(&cmd, 0);
        let mut frames = 0;
        let t0 = Instant::now();
        while frames < 4 && t0.elapsed() < Duration::from_secs(20) {
            if let Some(f) = s.poll(t0.elapsed().as_millis() as u64).unwrap() {
                assert_eq!((f.width, f.height), (256, 192));
                frames += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(frames >= 2, "frames from two runs of the command: {frames}");
        assert!(
            s.frames_seen() >= 4,
            "the command ran again after exiting: {}",
            s.frames_seen()
        );
    }
}
