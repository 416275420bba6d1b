//! USB webcams over V4L2 (`v4l2:/dev/videoN`), through nokhwa.
//!
//! The camera is asked for a small native mode (closest to the configured size, MJPEG or
//! YUYV, which every UVC webcam offers); each frame is converted once, straight into packed
//! RGB for the preprocessor. A capture thread owns the device and keeps only the newest
//! frame (one-slot mailbox): a slow consumer skips frames, it never queues them. When the
//! device fails or disappears (unplugged), the thread closes it and reopens it with backoff
//! (1 s doubling to 30 s) while the daemon keeps running. The conversions are pure functions,
//! tested without a camera. Must not: preprocess or embed.

use std::path::Path;

use super::CameraError;

/// Pixel layouts the converter understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Motion JPEG: each buffer is one JPEG.
    Mjpeg,
    /// YUV 4:2:2 packed as Y0 U Y1 V.
    Yuyv,
    /// YUV 4:2:0: a Y plane then interleaved U V at half resolution.
    Nv12,
    /// 8-bit grey.
    Gray,
    /// Packed RGB.
    Rgb,
    /// Packed BGR.
    Bgr,
}

fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// BT.601 limited-range YCbCr to RGB in fixed point (what UVC cameras send).
#[inline]
fn yuv_to_rgb(y: u8, u: u8, v: u8, out: &mut [u8]) {
    let c = (i32::from(y) - 16) * 298;
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    out[0] = clamp8((c + 409 * e + 128) >> 8);
    out[1] = clamp8((c - 100 * d - 208 * e + 128) >> 8);
    out[2] = clamp8((c + 516 * d + 128) >> 8);
}

/// Convert one raw buffer of `layout` at `width`×`height` into packed RGB8.
pub fn to_rgb(layout: Layout, buf: &[u8], width: usize, height: usize) -> Result<Vec<u8>, String> {
    let px = width * height;
    let need = match layout {
        Layout::Mjpeg => 0,
        Layout::Yuyv => px * 2,
        Layout::Nv12 => px + 2 * width.div_ceil(2) * height.div_ceil(2),
        Layout::Gray => px,
        Layout::Rgb | Layout::Bgr => px * 3,
    };
    if buf.len() < need {
        return Err(format!(
            "short {layout:?} frame: {} bytes, {width}x{height} needs {need}",
            buf.len()
        ));
    }
    let mut rgb = vec![0u8; px * 3];
    match layout {
        Layout::Mjpeg => {
            let img = crate::decode::decode_jpeg(buf)
                .map_err(|e| format!("undecodable MJPEG frame: {e}"))?;
            if img.dimensions() != (width as u32, height as u32) {
                return Err(format!(
                    "MJPEG frame is {}x{}, the camera said {width}x{height}",
                    img.width(),
                    img.height()
                ));
            }
            rgb = img.into_raw();
        }
        Layout::Yuyv => {
            for (src, dst) in buf[..px * 2].chunks_exact(4).zip(rgb.chunks_exact_mut(6)) {
                let (y0, u, y1, v) = (src[0], src[1], src[2], src[3]);
                yuv_to_rgb(y0, u, v, &mut dst[..3]);
                yuv_to_rgb(y1, u, v, &mut dst[3..]);
            }
        }
        Layout::Nv12 => {
            let cw = width.div_ceil(2);
            let (ys, uv) = buf.split_at(px);
            for r in 0..height {
                for c in 0..width {
                    let o = (r / 2 * cw + c / 2) * 2;
                    let i = r * width + c;
                    yuv_to_rgb(ys[i], uv[o], uv[o + 1], &mut rgb[i * 3..i * 3 + 3]);
                }
            }
        }
        Layout::Gray => {
            for (g, dst) in buf[..px].iter().zip(rgb.chunks_exact_mut(3)) {
                dst.fill(*g);
            }
        }
        Layout::Rgb => rgb.copy_from_slice(&buf[..px * 3]),
        Layout::Bgr => {
            for (s, d) in buf[..px * 3].chunks_exact(3).zip(rgb.chunks_exact_mut(3)) {
                d.copy_from_slice(&[s[2], s[1], s[0]]);
            }
        }
    }
    Ok(rgb)
}

/// The device index of `/dev/videoN` (or a bare `N`).
pub fn device_index(dev: &str) -> Result<u32, CameraError> {
    let n = Path::new(dev)
        .file_name()
        .and_then(|f| f.to_str())
        .map(|f| f.trim_start_matches("video"))
        .unwrap_or(dev);
    n.parse().map_err(|_| {
        CameraError::UnknownUri(format!(
            "v4l2:{dev} (expected v4l2:/dev/videoN; run `teachcam doctor` to list cameras)"
        ))
    })
}

#[cfg(all(feature = "hw", target_os = "linux"))]
pub use imp::V4l2Source;

#[cfg(all(feature = "hw", target_os = "linux"))]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use nokhwa::utils::{
        CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
    };

    use super::{Layout, to_rgb};
    use crate::camera::{CameraError, FrameSource, Pace};
    use crate::frame::Frame;

    #[derive(Default)]
    struct Mailbox {
        frame: Option<Frame>,
        frames: u64,
        last_error: Option<String>,
    }

    /// A V4L2 webcam read on its own thread, newest frame wins.
    pub struct V4l2Source {
        dev: String,
        mailbox: Arc<Mutex<Mailbox>>,
        stop: Arc<AtomicBool>,
        pace: Pace,
    }

    fn layout(f: FrameFormat) -> Layout {
        match f {
            FrameFormat::MJPEG => Layout::Mjpeg,
            FrameFormat::YUYV => Layout::Yuyv,
            FrameFormat::NV12 => Layout::Nv12,
            FrameFormat::GRAY => Layout::Gray,
            FrameFormat::RAWRGB => Layout::Rgb,
            FrameFormat::RAWBGR => Layout::Bgr,
        }
    }

    /// Open, stream until an error or stop; returns why it ended.
    fn stream(
        index: u32,
        dev: &str,
        size: (u32, u32),
        fps: u32,
        mailbox: &Mutex<Mailbox>,
        stop: &AtomicBool,
    ) -> String {
        let want = CameraFormat::new(Resolution::new(size.0, size.1), FrameFormat::MJPEG, fps);
        let formats = [FrameFormat::MJPEG, FrameFormat::YUYV];
        let req = RequestedFormat::with_formats(RequestedFormatType::Closest(want), &formats);
        let mut cam = match nokhwa::Camera::new(CameraIndex::Index(index), req) {
            Ok(c) => c,
            Err(e) => {
                return format!(
                    "cannot open {dev}: {e}; is the webcam plugged in and this user in the video group?"
                );
            }
        };
        if let Err(e) = cam.open_stream() {
            return format!("cannot start streaming from {dev}: {e}");
        }
        let f = cam.camera_format();
        log::info!(
            "camera {dev}: {}x{} {} at {} fps",
            f.width(),
            f.height(),
            f.format(),
            f.frame_rate()
        );
        let (w, h, l) = (f.width() as usize, f.height() as usize, layout(f.format()));
        while !stop.load(Ordering::Relaxed) {
            let raw = match cam.frame_raw() {
                Ok(r) => r,
                Err(e) => return format!("{dev}: {e}"),
            };
            match to_rgb(l, &raw, w, h) {
                Ok(rgb) => {
                    if let Ok(mut m) = mailbox.lock() {
                        m.frames += 1;
                        m.frame = Some(Frame {
                            width: w,
                            height: h,
                            rgb,
                            tag: dev.to_string(),
                        });
                    }
                }
                Err(e) => log::warn!("camera {dev}: frame skipped: {e}"),
            }
        }
        let _ = cam.stop_stream();
        "stopped".into()
    }

    impl V4l2Source {
        /// Start the capture thread for `dev` (`/dev/videoN`), asking for `size` at `fps`.
        pub fn new(
            dev: &str,
            size: (u32, u32),
            fps: u32,
            period_ms: u64,
        ) -> Result<Self, CameraError> {
            let index = super::device_index(dev)?;
            let mailbox = Arc::new(Mutex::new(Mailbox::default()));
            let stop = Arc::new(AtomicBool::new(false));
            let (m, s, d) = (Arc::clone(&mailbox), Arc::clone(&stop), dev.to_string());
            std::thread::Builder::new()
                .name("v4l2".into())
                .spawn(move || {
                    let mut backoff = Duration::from_secs(1);
                    while !s.load(Ordering::Relaxed) {
                        let seen = m.lock().map_or(0, |m| m.frames);
                        let why = stream(index, &d, size, fps, &m, &s);
                        if s.load(Ordering::Relaxed) {
                            break;
                        }
                        if m.lock().map_or(0, |m| m.frames) > seen {
                            backoff = Duration::from_secs(1);
                        }
                        log::warn!("camera {d}: {why}; reopening in {backoff:?}");
                        if let Ok(mut m) = m.lock() {
                            m.last_error = Some(why);
                        }
                        let until = std::time::Instant::now() + backoff;
                        while !s.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                })
                .map_err(|e| CameraError::Read {
                    source_name: dev.to_string(),
                    message: e.to_string(),
                })?;
            Ok(V4l2Source {
                dev: dev.to_string(),
                mailbox,
                stop,
                pace: Pace::new(period_ms),
            })
        }
    }

    impl FrameSource for V4l2Source {
        fn describe(&self) -> String {
            format!("v4l2 {}", self.dev)
        }

        fn poll(&mut self, now_ms: u64) -> Result<Option<Frame>, CameraError> {
            if !self.pace.ready(now_ms) {
                return Ok(None);
            }
            let frame = self.mailbox.lock().ok().and_then(|mut m| m.frame.take());
            if frame.is_some() {
                self.pace.took(now_ms);
            }
            Ok(frame)
        }
    }

    impl Drop for V4l2Source {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_converts_known_colours() {
        // Two pixels: white (Y 235) and black (Y 16), neutral chroma; then pure red.
        let buf = [235u8, 128, 16, 128, 81, 90, 81, 240];
        let rgb = to_rgb(Layout::Yuyv, &buf, 4, 1).unwrap();
        assert_eq!(&rgb[..6], &[255, 255, 255, 0, 0, 0]);
        let (r, g, b) = (rgb[6], rgb[7], rgb[8]);
        assert!(r > 250 && g < 5 && b < 5, "red came out as {r},{g},{b}");
    }

    #[test]
    fn nv12_gray_and_bgr_convert() {
        // 2x2 NV12, mid grey.
        let buf = [126u8, 126, 126, 126, 128, 128];
        let rgb = to_rgb(Layout::Nv12, &buf, 2, 2).unwrap();
        assert!(rgb.iter().all(|&v| (127..=129).contains(&v)), "{rgb:?}");
        assert_eq!(
            to_rgb(Layout::Gray, &[7, 9], 2, 1).unwrap(),
            [7, 7, 7, 9, 9, 9]
        );
        assert_eq!(to_rgb(Layout::Bgr, &[1, 2, 3], 1, 1).unwrap(), [3, 2, 1]);
    }

    #[test]
    fn mjpeg_decodes_and_checks_its_size() {
        let img = image::RgbImage::from_pixel(8, 6, image::Rgb([200, 30, 30]));
        let jpeg = crate::frame::encode_jpeg(&img).unwrap();
        let rgb = to_rgb(Layout::Mjpeg, &jpeg, 8, 6).unwrap();
        assert_eq!(rgb.len(), 8 * 6 * 3);
        assert!(rgb[0] > 150 && rgb[1] < 80);
        assert!(
            to_rgb(Layout::Mjpeg, &jpeg, 16, 6)
                .unwrap_err()
                .contains("8x6")
        );
        assert!(to_rgb(Layout::Mjpeg, b"nope", 8, 6).is_err());
        // A frame cut short (a USB hiccup) is refused, not shown half grey.
        let cut = &jpeg[..jpeg.len() - 10];
        assert!(
            to_rgb(Layout::Mjpeg, cut, 8, 6)
                .unwrap_err()
                .contains("truncated")
        );
    }

    #[test]
    fn short_frames_are_errors_not_panics() {
        let e = to_rgb(Layout::Yuyv, &[0; 10], 4, 4).unwrap_err();
        assert!(e.contains("needs 32"), "{e}");
    }

    #[test]
    fn device_paths_give_indices() {
        assert_eq!(device_index("/dev/video2").unwrap(), 2);
        assert_eq!(device_index("0").unwrap(), 0);
        assert!(device_index("/dev/webcam").is_err());
    }
}
