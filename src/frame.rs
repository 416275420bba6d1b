//! Frames and the small rules every layer shares about them: the decoded RGB [`Frame`], JPEG
//! encoding and decoding, the stored thumbnail, and what a class name may be.
//!
//! Near the bottom: depends on [`crate::decode`] (bounded decoding) and the `image` crate
//! only, so cameras, the store, datasets, the appliance core and the shell can all use these
//! types without depending on each other.
//! Must not: read files, clocks or devices (callers hand in bytes and pixels).
//! Invariant: a [`Frame`] that passed [`Frame::check`] has exactly `width · height · 3` bytes.

/// Label reported when the best class is below the head's confidence threshold; reserved,
/// so no class may be called this.
pub const UNKNOWN: &str = "unknown";

/// Longest side of a stored thumbnail, pixels.
pub const THUMB_SIDE: u32 = 320;

/// Quality of every JPEG this program writes (thumbnails, synthetic datasets).
pub const JPEG_QUALITY: u8 = 85;

/// Longest class name, in bytes (it becomes a folder name on export).
pub const MAX_CLASS_NAME: usize = 64;

/// One decoded RGB frame or image.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Packed RGB8, row by row.
    pub rgb: Vec<u8>,
    /// What the source knows about the frame (file name, scene kind), for logs and tests.
    pub tag: String,
}

/// Why a frame or an image could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// The pixel buffer does not match the stated size (a corrupt or truncated frame).
    #[error("malformed frame: {width}x{height} needs {} bytes, got {len}", width * height * 3)]
    Malformed {
        /// Stated width.
        width: usize,
        /// Stated height.
        height: usize,
        /// Bytes present.
        len: usize,
    },
    /// A zero-sized or absurdly large frame.
    #[error("frame size {width}x{height} is not usable (1..={MAX_SIDE} pixels a side)")]
    Size {
        /// Stated width.
        width: usize,
        /// Stated height.
        height: usize,
    },
    /// JPEG encoding failed.
    #[error("cannot encode JPEG: {0}")]
    Encode(String),
    /// The bytes are not a decodable JPEG.
    #[error("cannot decode JPEG: {0}")]
    Decode(String),
}

/// Largest frame side accepted from a camera or a file.
pub const MAX_SIDE: usize = 16_384;

impl Frame {
    /// A frame from packed RGB8 pixels, checked.
    pub fn new(width: usize, height: usize, rgb: Vec<u8>, tag: &str) -> Result<Self, FrameError> {
        let f = Frame {
            width,
            height,
            rgb,
            tag: tag.to_string(),
        };
        f.check()?;
        Ok(f)
    }

    /// Whether the size is usable and the buffer matches it (cameras can deliver torn frames).
    pub fn check(&self) -> Result<(), FrameError> {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            return Err(FrameError::Size {
                width: w,
                height: h,
            });
        }
        if self.rgb.len() != w * h * 3 {
            return Err(FrameError::Malformed {
                width: w,
                height: h,
                len: self.rgb.len(),
            });
        }
        Ok(())
    }

    fn image(&self) -> Result<image::RgbImage, FrameError> {
        self.check()?;
        image::RgbImage::from_raw(self.width as u32, self.height as u32, self.rgb.clone()).ok_or(
            FrameError::Malformed {
                width: self.width,
                height: self.height,
                len: self.rgb.len(),
            },
        )
    }
}

/// JPEG-encode an RGB image at [`JPEG_QUALITY`].
pub fn encode_jpeg(img: &image::RgbImage) -> Result<Vec<u8>, FrameError> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
        .encode_image(img)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// Decode JPEG bytes into a frame (tagged `tag`), bounded like every decode: the pixel
/// limit is checked from the header and truncated data is refused ([`crate::decode`]).
pub fn decode_jpeg(bytes: &[u8], tag: &str) -> Result<Frame, FrameError> {
    let img = crate::decode::decode_jpeg(bytes).map_err(|e| FrameError::Decode(e.to_string()))?;
    let (w, h) = img.dimensions();
    Frame::new(w as usize, h as usize, img.into_raw(), tag)
}

/// The JPEG thumbnail (longest side at most [`THUMB_SIDE`]) stored with each capture. A frame
/// that cannot be encoded is an error: the store never keeps an empty thumbnail.
pub fn thumbnail_jpeg(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let img = frame.image()?;
    let (w, h) = img.dimensions();
    let scale = THUMB_SIDE as f32 / w.max(h) as f32;
    if scale < 1.0 {
        let small = image::imageops::thumbnail(
            &img,
            ((w as f32 * scale) as u32).max(1),
            ((h as f32 * scale) as u32).max(1),
        );
        encode_jpeg(&small)
    } else {
        encode_jpeg(&img)
    }
}

/// Whether `name` may be a class name: non-empty, no surrounding spaces, no control
/// characters, not [`UNKNOWN`], and usable as a folder name in an image-folder export.
/// The error says what is wrong, to follow "class NAME ".
pub fn check_class_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.trim() != name {
        return Err("must be non-empty without leading or trailing spaces".into());
    }
    if name == UNKNOWN {
        return Err(format!(
            "is reserved ({UNKNOWN:?} is the answer below the threshold)"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
        || name.len() > MAX_CLASS_NAME
    {
        return Err(format!(
            "must be a plain name (no / or \\ or control characters, not . or .., at most {MAX_CLASS_NAME} bytes) so it can be a folder name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_frames_are_refused_not_indexed() {
        let ok = Frame::new(2, 1, vec![0; 6], "t").unwrap();
        assert!(ok.check().is_ok());
        let e = Frame::new(2, 2, vec![0; 6], "t").unwrap_err();
        assert!(e.to_string().contains("needs 12 bytes, got 6"), "{e}");
        assert!(matches!(
            Frame::new(0, 5, vec![], "t"),
            Err(FrameError::Size { .. })
        ));
        let torn = Frame {
            rgb: vec![1; 5],
            ..ok
        };
        assert!(
            thumbnail_jpeg(&torn).is_err(),
            "no thumbnail of a torn frame"
        );
    }

    #[test]
    fn thumbnails_are_small_jpegs_that_decode() {
        let f = Frame::new(640, 480, vec![128; 640 * 480 * 3], "grey").unwrap();
        let t = thumbnail_jpeg(&f).unwrap();
        let back = decode_jpeg(&t, "back").unwrap();
        assert_eq!((back.width, back.height), (320, 240));
        assert!(decode_jpeg(b"not a jpeg", "x").is_err());
        // Small frames are kept at their size.
        let s = Frame::new(8, 6, vec![9; 8 * 6 * 3], "s").unwrap();
        assert_eq!(
            decode_jpeg(&thumbnail_jpeg(&s).unwrap(), "").unwrap().width,
            8
        );
    }

    #[test]
    fn class_names_must_be_plain_folder_names() {
        for good in ["cup", "red mug", "Ünïcode", "a.b"] {
            assert!(check_class_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            " cup",
            "a/b",
            "..",
            "unknown",
            "line\nbreak",
            "\u{1b}[31m",
            &"x".repeat(65),
        ] {
            assert!(check_class_name(bad).is_err(), "{bad:?}");
        }
    }
}
