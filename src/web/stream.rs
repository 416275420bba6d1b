//! The long responses: the MJPEG live view (newest frame only, one encoding shared by the
//! viewers of a frame, at most [`super::STREAM_MAX_FPS`]) and the dataset download (streamed
//! from the state directory, each sample verified).
//!
//! Must not: make the loop wait (it reads the hub's newest-only frame slot).

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{self, Response};
use super::{STREAM_MAX_FPS, Shared, take_slot};
use crate::frame::Frame;

/// The JPEG of frame `version` (encoded once per frame, on the first viewer's thread).
pub(super) fn jpeg_of(s: &Shared, version: u64, frame: &Frame) -> Option<(u64, Arc<Vec<u8>>)> {
    let mut cache = s.jpeg.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((v, j)) = cache.as_ref()
        && *v == version
    {
        return Some((version, Arc::clone(j)));
    }
    let img =
        image::RgbImage::from_raw(frame.width as u32, frame.height as u32, frame.rgb.clone())?;
    let jpeg = Arc::new(crate::frame::encode_jpeg(&img).ok()?);
    *cache = Some((version, Arc::clone(&jpeg)));
    Some((version, jpeg))
}

/// `multipart/x-mixed-replace` JPEGs of each new frame, at most [`STREAM_MAX_FPS`], until the
/// viewer goes away (or stops reading for longer than the write timeout).
pub(super) fn stream_mjpeg(stream: &mut TcpStream, s: &Shared) {
    use std::io::Write;
    let Some(_slot) = take_slot(&s.streams, s.limits.max_streams) else {
        let _ = http::write_response(
            stream,
            &Response::error(
                503,
                "too many live views open; close one or use /api/snapshot.jpg",
            ),
        );
        return;
    };
    let head = Response::new(200, "multipart/x-mixed-replace; boundary=frame", "");
    if http::write_head(stream, &head, None).is_err() {
        return;
    }
    let mut seen = 0;
    let period = Duration::from_millis(1000 / STREAM_MAX_FPS);
    loop {
        let started = Instant::now();
        let Some((version, frame)) = s.hub.wait_frame(seen, Duration::from_secs(2)) else {
            continue;
        };
        seen = version;
        let Some((_, jpeg)) = jpeg_of(s, version, &frame) else {
            continue;
        };
        let part = format!(
            "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        if stream
            .write_all(part.as_bytes())
            .and_then(|()| stream.write_all(&jpeg))
            .and_then(|()| stream.write_all(b"\r\n"))
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
        if let Some(rest) = period.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// The dataset tarball (`teachcam dataset export`'s format) of the samples listed now,
/// streamed as it is read; it holds one of the stream slots while it runs.
pub(super) fn export_tar(stream: &mut TcpStream, s: &Shared) {
    let Some(_slot) = take_slot(&s.streams, s.limits.max_streams) else {
        let _ = http::write_response(
            stream,
            &Response::error(503, "too many downloads and live views open; try again"),
        );
        return;
    };
    let ids: Vec<u64> = s
        .hub
        .samples()
        .map(|l| l.samples.iter().map(|x| x.id).collect())
        .unwrap_or_default();
    let head = Response::new(200, "application/x-tar", "").with(
        "Content-Disposition",
        "attachment; filename=\"teachcam-dataset.tar\"".into(),
    );
    if http::write_head(stream, &head, None).is_err() {
        return;
    }
    let w = std::io::BufWriter::with_capacity(64 * 1024, stream);
    match crate::dataset::stream_tar(&s.info.state_dir, &ids, w) {
        Ok((n, 0)) => log::info!("web console: dataset download of {n} samples"),
        Ok((n, left)) => log::warn!(
            "web console: dataset download of {n} samples; {left} left out (named above)"
        ),
        Err(e) => log::warn!("web console: dataset download cut off: {e}"),
    }
}
