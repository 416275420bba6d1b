//! Synthetic scenes for demos and tests: three kinds of object ("ball", "block", "ring") on
//! cluttered backgrounds, at random places, sizes and colours, so the repository can show the
//! whole learn-then-recognise loop without shipping or downloading photos.
//!
//! Deterministic for a seed. Backgrounds are drawn from the same distribution for every
//! class, so only the object tells the classes apart.

use std::path::Path;

use crate::rng::Rng;

/// The object kinds, also the class folder names.
pub const KINDS: [&str; 3] = ["ball", "block", "ring"];

/// Render one scene of `kind` (index into [`KINDS`]) as packed RGB8.
pub fn render(kind: usize, width: usize, height: usize, rng: &mut Rng) -> Vec<u8> {
    let mut img = vec![0u8; width * height * 3];
    // Background: a two-colour gradient plus blotches and pixel noise.
    let c0: [f32; 3] = [rng.f32() * 200.0, rng.f32() * 200.0, rng.f32() * 200.0];
    let c1: [f32; 3] = [rng.f32() * 255.0, rng.f32() * 255.0, rng.f32() * 255.0];
    let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..6)
        .map(|_| {
            (
                rng.f32() * width as f32,
                rng.f32() * height as f32,
                10.0 + rng.f32() * 40.0,
                [rng.f32() * 255.0, rng.f32() * 255.0, rng.f32() * 255.0],
            )
        })
        .collect();
    let short = width.min(height) as f32;
    let r = short * (0.18 + 0.14 * rng.f32());
    let cx = width as f32 * (0.35 + 0.3 * rng.f32());
    let cy = height as f32 * (0.35 + 0.3 * rng.f32());
    let angle = rng.f32() * std::f32::consts::PI;
    let hue = rng.f32();
    let colour = hsv(hue, 0.7 + 0.3 * rng.f32(), 0.6 + 0.4 * rng.f32());
    let (sa, ca) = angle.sin_cos();
    for y in 0..height {
        for x in 0..width {
            let t = (x + y) as f32 / (width + height) as f32;
            let mut p = [0f32; 3];
            for k in 0..3 {
                p[k] = c0[k] * (1.0 - t) + c1[k] * t;
            }
            for &(bx, by, br, bc) in &blobs {
                let d2 = (x as f32 - bx).powi(2) + (y as f32 - by).powi(2);
                if d2 < br * br {
                    p = bc;
                }
            }
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let dist = (dx * dx + dy * dy).sqrt();
            let inside = match kind {
                // Shaded sphere: brighter towards the upper left.
                0 => dist < r,
                // Rotated square with a dark outline.
                1 => {
                    let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
                    u.abs().max(v.abs()) < r * 0.85
                }
                // Thick ring.
                _ => dist < r && dist > r * 0.55,
            };
            if inside {
                let shade = match kind {
                    0 => {
                        1.0 - 0.6
                            * (((dx + r * 0.4).powi(2) + (dy + r * 0.4).powi(2)).sqrt() / (2.0 * r))
                    }
                    1 => {
                        let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
                        if u.abs().max(v.abs()) > r * 0.75 {
                            0.35
                        } else {
                            1.0
                        }
                    }
                    _ => 0.9,
                };
                for k in 0..3 {
                    p[k] = colour[k] * 255.0 * shade;
                }
            }
            let noise = (rng.f32() - 0.5) * 24.0;
            for k in 0..3 {
                img[(y * width + x) * 3 + k] = (p[k] + noise).clamp(0.0, 255.0) as u8;
            }
        }
    }
    img
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Write `out/train/<kind>/NNN.jpg` and `out/val/<kind>/NNN.jpg`.
pub fn write_dataset(out: &Path, train: usize, val: usize, seed: u64) -> std::io::Result<usize> {
    let mut rng = Rng::new(seed);
    let mut n = 0;
    for (split, count) in [("train", train), ("val", val)] {
        for (k, kind) in KINDS.iter().enumerate() {
            let dir = out.join(split).join(kind);
            std::fs::create_dir_all(&dir)?;
            for i in 0..count {
                let (w, h) = (256, 192);
                let rgb = render(k, w, h, &mut rng);
                let img = image::RgbImage::from_raw(w as u32, h as u32, rgb)
                    .ok_or_else(|| std::io::Error::other("image buffer size"))?;
                let path = dir.join(format!("{i:03}.jpg"));
                let bytes = crate::frame::encode_jpeg(&img).map_err(std::io::Error::other)?;
                crate::fsutil::atomic_write(&path, &bytes)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_kinds_differ() {
        let a = render(0, 64, 48, &mut Rng::new(1));
        let b = render(0, 64, 48, &mut Rng::new(1));
        let c = render(2, 64, 48, &mut Rng::new(1));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn writes_the_image_folder_layout() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(write_dataset(d.path(), 2, 1, 0).unwrap(), 9);
        let f = crate::imagefolder::scan(&d.path().join("train")).unwrap();
        assert_eq!(f.classes, KINDS);
        assert_eq!(f.items.len(), 6);
    }
}
