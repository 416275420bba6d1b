//! More from each press, measured: cheap image variations of a captured frame, for
//! `teachcam fewshot`'s protocol.
//!
//! Two kinds, both pure functions of an RGB [`Frame`] and an explicit [`Rng`]:
//! - [`augmented`]: a training variation of a stored sample (made from its stored thumbnail):
//!   a horizontal flip half of the time, a crop of 55–100 % of the area with the aspect
//!   ratio within 0.8–1.25, and colour jitter (brightness, contrast, saturation ±20 %).
//! - [`burst_like`]: a camera-like variation for benchmarks on still photos, standing in for
//!   the next frame of a burst (a hand-held object a moment later): a crop of 88–100 % of the
//!   area shifted by up to 4 % of the side, brightness ±8 %, and sensor noise (σ 2 levels).
//!   The appliance itself never uses it: its bursts are real frames.
//!
//! The appliance's training adds no variations: on the photo sets they measured no gain for a
//! linear head on the backbone's features (docs/measurements.md, "What a few presses teach").
//!
//! Crops are resampled bilinearly to the crop's own size (no upscaling beyond the source's
//! detail), so the backbone's preprocessing sees what a camera framing that region would.
//! Must not: read files or clocks; randomness only from the `Rng` passed in.

use crate::frame::Frame;
use crate::rng::Rng;

/// A crop of `src`: the rectangle `(x0, y0, w, h)` in source pixels (fractional), resampled
/// bilinearly to `out_w × out_h`, mirrored left–right when `flip`.
fn crop_resize(src: &Frame, rect: (f32, f32, f32, f32), out: (usize, usize), flip: bool) -> Frame {
    let (x0, y0, cw, ch) = rect;
    let (ow, oh) = (out.0.max(1), out.1.max(1));
    let (sw, sh) = (src.width, src.height);
    let mut rgb = vec![0u8; ow * oh * 3];
    let sample = |v: f32, len: usize| -> (usize, usize, f32) {
        let v = v.clamp(0.0, (len - 1) as f32);
        let i = v.floor() as usize;
        let j = (i + 1).min(len - 1);
        (i, j, v - i as f32)
    };
    for oy in 0..oh {
        let sy = y0 + (oy as f32 + 0.5) * ch / oh as f32 - 0.5;
        let (y_a, y_b, fy) = sample(sy, sh);
        for ox in 0..ow {
            let tx = if flip { ow - 1 - ox } else { ox };
            let sx = x0 + (tx as f32 + 0.5) * cw / ow as f32 - 0.5;
            let (x_a, x_b, fx) = sample(sx, sw);
            for c in 0..3 {
                let p = |x: usize, y: usize| src.rgb[(y * sw + x) * 3 + c] as f32;
                let top = p(x_a, y_a) * (1.0 - fx) + p(x_b, y_a) * fx;
                let bottom = p(x_a, y_b) * (1.0 - fx) + p(x_b, y_b) * fx;
                rgb[(oy * ow + ox) * 3 + c] = (top * (1.0 - fy) + bottom * fy).round() as u8;
            }
        }
    }
    Frame {
        width: ow,
        height: oh,
        rgb,
        tag: src.tag.clone(),
    }
}

/// A uniform value in `[lo, hi)`.
fn uniform(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.f32()
}

/// A crop covering `area` of `src` with aspect ratio `aspect` (width / height), clipped to
/// the frame, centred at a random place where it fits (`shift` limits how far from the
/// centre, as a fraction of the side; 1 = anywhere).
fn random_rect(
    src: &Frame,
    area: f32,
    aspect: f32,
    shift: f32,
    rng: &mut Rng,
) -> (f32, f32, f32, f32) {
    let (w, h) = (src.width as f32, src.height as f32);
    let a = area * w * h;
    let cw = (a * aspect).sqrt().min(w);
    let ch = (a / aspect).sqrt().min(h);
    let room_x = (w - cw) / 2.0;
    let room_y = (h - ch) / 2.0;
    let dx = uniform(rng, -1.0, 1.0) * room_x.min(shift * w);
    let dy = uniform(rng, -1.0, 1.0) * room_y.min(shift * h);
    (room_x + dx, room_y + dy, cw, ch)
}

/// Brightness (a factor), contrast (a factor around the mean grey) and saturation (a factor
/// of the distance from each pixel's grey), applied in that order, clamped to 0..=255.
fn colour(f: &mut Frame, brightness: f32, contrast: f32, saturation: f32) {
    let n = (f.width * f.height).max(1);
    let grey = |p: &[u8]| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
    let mean = f.rgb.chunks_exact(3).map(grey).sum::<f32>() / n as f32 * brightness;
    for p in f.rgb.chunks_exact_mut(3) {
        let v = [p[0] as f32, p[1] as f32, p[2] as f32].map(|c| c * brightness);
        let g = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
        for c in 0..3 {
            let s = g + (v[c] - g) * saturation;
            p[c] = (mean + (s - mean) * contrast).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// A training variation of `src` (module doc): flip, crop, colour jitter.
pub fn augmented(src: &Frame, rng: &mut Rng) -> Frame {
    let flip = rng.f32() < 0.5;
    let area = uniform(rng, 0.55, 1.0);
    let aspect = uniform(rng, 0.8f32.ln(), 1.25f32.ln()).exp();
    let rect = random_rect(src, area, aspect, 1.0, rng);
    let out = (rect.2.round() as usize, rect.3.round() as usize);
    let mut f = crop_resize(src, rect, out, flip);
    colour(
        &mut f,
        uniform(rng, 0.8, 1.2),
        uniform(rng, 0.8, 1.2),
        uniform(rng, 0.8, 1.2),
    );
    f
}

/// A camera-like variation of `src` standing in for another frame of a burst (module doc).
pub fn burst_like(src: &Frame, rng: &mut Rng) -> Frame {
    let area = uniform(rng, 0.88, 1.0);
    let aspect = src.width as f32 / src.height.max(1) as f32;
    let rect = random_rect(src, area, aspect, 0.04, rng);
    let mut f = crop_resize(src, rect, (src.width, src.height), false);
    colour(&mut f, uniform(rng, 0.92, 1.08), 1.0, 1.0);
    for v in f.rgb.iter_mut() {
        *v = (*v as f32 + 2.0 * rng.normal()).round().clamp(0.0, 255.0) as u8;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Frame {
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 100]);
            }
        }
        Frame {
            width: w,
            height: h,
            rgb,
            tag: "g".into(),
        }
    }

    #[test]
    fn a_whole_frame_crop_is_the_frame_and_a_flip_mirrors_it() {
        let f = gradient(40, 30);
        let same = crop_resize(&f, (0.0, 0.0, 40.0, 30.0), (40, 30), false);
        assert_eq!(same.rgb, f.rgb);
        let m = crop_resize(&f, (0.0, 0.0, 40.0, 30.0), (40, 30), true);
        for y in 0..30 {
            for x in 0..40 {
                let a = &f.rgb[(y * 40 + x) * 3..][..3];
                let b = &m.rgb[(y * 40 + (39 - x)) * 3..][..3];
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn colour_factors_of_one_change_nothing_and_brightness_scales() {
        let mut f = gradient(20, 10);
        let before = f.rgb.clone();
        colour(&mut f, 1.0, 1.0, 1.0);
        let diff = f.rgb.iter().zip(&before).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(diff <= Some(1), "{diff:?}");
        let mut g = gradient(20, 10);
        colour(&mut g, 0.5, 1.0, 1.0);
        let mean = |f: &Frame| f.rgb.iter().map(|&v| v as f32).sum::<f32>() / f.rgb.len() as f32;
        let r = mean(&g) / mean(&gradient(20, 10));
        assert!((r - 0.5).abs() < 0.02, "{r}");
    }

    #[test]
    fn variations_are_seeded_bounded_and_differ_from_the_source() {
        let f = gradient(64, 48);
        let a = augmented(&f, &mut Rng::new(1));
        assert_eq!(a, augmented(&f, &mut Rng::new(1)), "same seed, same view");
        assert_ne!(a, augmented(&f, &mut Rng::new(2)));
        assert!(a.width <= 64 && a.height <= 48 && a.width >= 30 && a.height >= 20);
        assert_eq!(a.rgb.len(), a.width * a.height * 3);
        let b = burst_like(&f, &mut Rng::new(3));
        assert_eq!((b.width, b.height), (64, 48));
        assert_ne!(b.rgb, f.rgb);
        // A burst frame stays close to the source: mean absolute difference of a few levels.
        let mad = b
            .rgb
            .iter()
            .zip(&f.rgb)
            .map(|(x, y)| x.abs_diff(*y) as f32)
            .sum::<f32>()
            / f.rgb.len() as f32;
        assert!(mad > 0.5 && mad < 25.0, "{mad}");
    }
}
