//! Bounded image decoding: the one place where image bytes from outside (files, camera
//! frames, thumbnails from a tarball) become pixels.
//!
//! Invariants, for every decode:
//! - The pixel count is read from the header and checked against a limit ([`max_pixels`],
//!   default [`DEFAULT_MAX_PIXELS`]) before any pixel buffer exists, and `image`'s own
//!   decoder limits (width, height, allocation) are set as a second line; a 470 KB PNG that
//!   declares 22000×22000 is refused in microseconds instead of taking 2 GB.
//! - Truncated data is an error: a JPEG must reach its end-of-image marker and a PNG its
//!   `IEND` chunk, walking the file's own segment structure (decoders fill a cut-off image
//!   with grey and report success).
//! - A file is read with a size cap before decoding.
//!
//! Must not: resize, crop or know what the pixels are for.

use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use image::{ImageFormat, ImageReader, RgbImage};

/// Default pixel limit: 40 megapixels (a 7296×5472 photo), about 120 MB as RGB, well under
/// a 1 GB board's memory; camera frames and thumbnails are far smaller.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// The environment variable that sets the pixel limit (a whole number of pixels).
pub const MAX_PIXELS_ENV: &str = "TEACHCAM_MAX_PIXELS";

/// Largest limit that may be configured (the `image` decoders' `u32` sides allow more, but no
/// board this program runs on has the memory).
pub const MAX_MAX_PIXELS: u64 = 1 << 30;

/// 0 = not set yet: read [`MAX_PIXELS_ENV`] on first use.
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Why an image could not be decoded. Messages never quote the file's content.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The header declares more pixels than the limit.
    #[error(
        "image is {width}x{height} ({} megapixels), over the {} megapixel limit; shrink it, or raise the limit with {MAX_PIXELS_ENV}",
        (*width as u64 * *height as u64) as f64 / 1e6,
        *limit as f64 / 1e6
    )]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit in force.
        limit: u64,
    },
    /// The file is larger than any image under the limit could be.
    #[error("file is {size} bytes, more than an image under the pixel limit can need ({cap})")]
    FileTooLarge {
        /// File size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// The data stops before the format's end marker, or its structure is broken.
    #[error("{0}")]
    Malformed(String),
    /// Not a JPEG or PNG.
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    /// The decoder refused the data.
    #[error("cannot decode: {0}")]
    Decoder(image::ImageError),
}

/// The pixel limit in force: set by [`set_max_pixels`], else [`MAX_PIXELS_ENV`], else
/// [`DEFAULT_MAX_PIXELS`]. A malformed environment value is reported once and ignored.
pub fn max_pixels() -> u64 {
    let v = LIMIT.load(Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    let v = match std::env::var(MAX_PIXELS_ENV) {
        Ok(s) => match parse_limit(&s) {
            Ok(n) => n,
            Err(why) => {
                log::warn!("{MAX_PIXELS_ENV}={s:.40}: {why}; using {DEFAULT_MAX_PIXELS}");
                DEFAULT_MAX_PIXELS
            }
        },
        Err(_) => DEFAULT_MAX_PIXELS,
    };
    // Several threads may race here; they all compute the same value.
    LIMIT.store(v, Ordering::Relaxed);
    v
}

/// Check a pixel-limit setting: a whole number in 1..=[`MAX_MAX_PIXELS`].
pub fn parse_limit(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_MAX_PIXELS).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number of pixels in 1..={MAX_MAX_PIXELS}"
        )),
    }
}

/// Set the pixel limit for this process (a configuration value checked by [`parse_limit`]).
pub fn set_max_pixels(n: u64) {
    LIMIT.store(n.clamp(1, MAX_MAX_PIXELS), Ordering::Relaxed);
}

/// Read and decode an image file (JPEG or PNG, told by content) into RGB8.
pub fn decode_file(path: &Path) -> Result<RgbImage, DecodeError> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let cap = file_cap(max_pixels());
    if size > cap {
        return Err(DecodeError::FileTooLarge { size, cap });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // `take` also bounds a file that grows while it is read.
    f.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(DecodeError::FileTooLarge {
            size: bytes.len() as u64,
            cap,
        });
    }
    decode(&bytes, None)
}

/// Decode a JPEG held in memory (camera frames, thumbnails).
pub fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode(bytes, Some(ImageFormat::Jpeg))
}

/// Decode JPEG or PNG bytes; `format` = `None` tells the format from the content.
pub fn decode(bytes: &[u8], format: Option<ImageFormat>) -> Result<RgbImage, DecodeError> {
    let format = match format {
        Some(f) => f,
        None => image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?,
    };
    match format {
        ImageFormat::Jpeg => {
            jpeg_end(bytes).map_err(DecodeError::Malformed)?;
        }
        ImageFormat::Png => {
            png_end(bytes).map_err(DecodeError::Malformed)?;
        }
        _ => return Err(DecodeError::UnknownFormat),
    }
    let limit = max_pixels();
    let reader = |limits: bool| {
        let mut r = ImageReader::with_format(Cursor::new(bytes), format);
        if limits {
            r.limits(decoder_limits(limit));
        } else {
            r.no_limits();
        }
        r
    };
    let (width, height) = reader(true)
        .into_dimensions()
        .map_err(DecodeError::Decoder)?;
    if width as u64 * height as u64 > limit {
        return Err(DecodeError::TooLarge {
            width,
            height,
            limit,
        });
    }
    if width == 0 || height == 0 {
        return Err(DecodeError::Malformed("image has no pixels".into()));
    }
    let img = reader(true).decode().map_err(|e| match e {
        image::ImageError::Limits(_) => DecodeError::TooLarge {
            width,
            height,
            limit,
        },
        e => DecodeError::Decoder(e),
    })?;
    Ok(img.into_rgb8())
}

/// The largest file accepted for decoding under `limit` pixels: 4 bytes a pixel (no JPEG or
/// PNG of real content is larger than its raw RGBA) plus room for metadata.
fn file_cap(limit: u64) -> u64 {
    limit.saturating_mul(4).saturating_add(16 << 20)
}

/// `image`'s limits for a decode of at most `pixels` pixels: no side longer than the limit,
/// and allocations bounded by the largest buffers such an image needs (16-bit RGBA plus the
/// RGB8 copy, with slack for decoder state).
fn decoder_limits(pixels: u64) -> image::Limits {
    let side = u32::try_from(pixels).unwrap_or(u32::MAX);
    let mut l = image::Limits::default();
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    l.max_alloc = Some(pixels.saturating_mul(8 + 3).saturating_add(64 << 20));
    l
}

/// Offset just past a JPEG's end-of-image marker, walking its segments: every segment length
/// must fit in the data, and the entropy-coded data after each start-of-scan must end in a
/// marker. `Err` says where the structure breaks (a cut-off file ends before `FF D9`).
pub fn jpeg_end(b: &[u8]) -> Result<usize, String> {
    let truncated = || "JPEG data ends before its end-of-image marker (truncated)".to_string();
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    let mut i = 2;
    loop {
        // A marker: one or more 0xFF fill bytes, then the code.
        if *b.get(i).ok_or_else(truncated)? != 0xFF {
            return Err(format!(
                "JPEG structure broken at byte {i} (marker expected)"
            ));
        }
        while *b.get(i).ok_or_else(truncated)? == 0xFF {
            i += 1;
        }
        let code = b[i];
        i += 1;
        match code {
            0xD9 => return Ok(i),
            0xD8 => {
                return Err(format!(
                    "JPEG has a second start-of-image at byte {}",
                    i - 2
                ));
            }
            0x01 | 0xD0..=0xD7 => continue,
            0x00 => {
                return Err(format!(
                    "JPEG structure broken at byte {} (stuffed byte outside a scan)",
                    i - 1
                ));
            }
            _ => {}
        }
        let len = match b.get(i..i + 2) {
            Some(l) => u16::from_be_bytes([l[0], l[1]]) as usize,
            None => return Err(truncated()),
        };
        if len < 2 {
            return Err(format!("JPEG segment at byte {i} has length {len}"));
        }
        let end = i + len;
        if end > b.len() {
            return Err(truncated());
        }
        i = end;
        if code == 0xDA {
            // Entropy-coded data: 0xFF is followed by a stuffed 0x00 or a restart marker;
            // anything else is the next marker.
            loop {
                let at = b[i..]
                    .iter()
                    .position(|&x| x == 0xFF)
                    .ok_or_else(truncated)?;
                i += at;
                match *b.get(i + 1).ok_or_else(truncated)? {
                    0x00 | 0xD0..=0xD7 => i += 2,
                    _ => break,
                }
            }
        }
    }
}

/// Offset just past a PNG's `IEND` chunk, walking its chunks (each length must fit).
pub fn png_end(b: &[u8]) -> Result<usize, String> {
    const SIG: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    if !b.starts_with(&SIG) {
        return Err("not a PNG (bad signature)".into());
    }
    let mut i = SIG.len();
    loop {
        let Some(h) = b.get(i..i + 8) else {
            return Err("PNG data ends before its IEND chunk (truncated)".into());
        };
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > 0x7FFF_FFFF {
            return Err(format!("PNG chunk at byte {i} declares {len} bytes"));
        }
        let end = i + 12 + len;
        if end > b.len() {
            return Err("PNG data ends before its IEND chunk (truncated)".into());
        }
        if &h[4..8] == b"IEND" {
            return Ok(end);
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        crate::frame::encode_jpeg(&img).unwrap()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 11) as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// The CRC-32 PNG chunks carry (so a patched header is still a valid chunk).
    fn crc32(b: &[u8]) -> u32 {
        let mut c = !0u32;
        for &x in b {
            c ^= u32::from(x);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn whole_images_decode() {
        let img = decode(&jpeg(64, 48), None).unwrap();
        assert_eq!(img.dimensions(), (64, 48));
        let img = decode(&png(5, 3), None).unwrap();
        assert_eq!(
            (img.dimensions(), img.get_pixel(1, 2).0),
            ((5, 3), [3, 22, 7])
        );
        assert_eq!(jpeg_end(&jpeg(8, 8)).unwrap(), jpeg(8, 8).len());
    }

    #[test]
    fn every_truncation_of_a_jpeg_or_png_is_refused() {
        for bytes in [jpeg(40, 30), png(20, 10)] {
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut], None).is_err(),
                    "cut at {cut} of {} decoded",
                    bytes.len()
                );
            }
        }
        let j = jpeg(200, 150);
        let e = decode(&j[..j.len() * 2 / 3], None).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn pixel_bombs_are_refused_from_the_header() {
        // A PNG header declaring 22000 x 22000 with a tiny body: refused before decoding.
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&22000u32.to_be_bytes());
        p[20..24].copy_from_slice(&22000u32.to_be_bytes());
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&p, None).unwrap_err();
        assert!(
            matches!(e, DecodeError::TooLarge { width: 22000, .. }),
            "{e}"
        );
        assert!(e.to_string().contains(MAX_PIXELS_ENV), "{e}");
        // The same for a JPEG whose frame header says 12000 x 12000.
        let mut j = jpeg(8, 8);
        let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        j[sof + 5..sof + 7].copy_from_slice(&12000u16.to_be_bytes());
        j[sof + 7..sof + 9].copy_from_slice(&12000u16.to_be_bytes());
        assert!(matches!(
            decode(&j, None),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(decoder_limits(DEFAULT_MAX_PIXELS).max_alloc.unwrap() < 1 << 30);
    }

    #[test]
    fn limits_parse_and_errors_do_not_quote_content() {
        assert_eq!(parse_limit(" 1000 "), Ok(1000));
        for bad in ["0", "-1", "1e9", "", "99999999999999999999"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
        let e = decode(b"root:x:0:0:root:/root:/bin/bash\n", None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("root"), "{e}");
        // Structure errors name a position, never bytes.
        let mut j = jpeg(8, 8);
        j[2] = 0x12;
        assert!(jpeg_end(&j).unwrap_err().contains("byte 2"));
    }
}
