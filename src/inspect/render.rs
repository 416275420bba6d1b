//! Pictures for people: heat-map overlays, channel grids, and model tensors back to pixels.
//!
//! Must not: read or write files (the app does), or run networks. Colour ramps are our own
//! piecewise-linear tables.

use image::RgbImage;

use super::explain::ClassMap;

/// Dark blue → cyan → yellow → red, for "how much" (0 → 1).
const HEAT: [[f32; 3]; 5] = [
    [0.0, 0.0, 80.0],
    [0.0, 120.0, 255.0],
    [40.0, 230.0, 180.0],
    [255.0, 230.0, 0.0],
    [230.0, 20.0, 0.0],
];

/// Black → purple → orange → pale yellow, for channel activations (0 → 1).
const ACT: [[f32; 3]; 4] = [
    [0.0, 0.0, 0.0],
    [110.0, 20.0, 130.0],
    [240.0, 120.0, 30.0],
    [252.0, 250.0, 190.0],
];

fn ramp(table: &[[f32; 3]], t: f32) -> [f32; 3] {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (table.len() - 1) as f32;
    let i = (x.floor() as usize).min(table.len() - 2);
    let f = x - i as f32;
    let (a, b) = (table[i], table[i + 1]);
    [0, 1, 2].map(|k| a[k] + (b[k] - a[k]) * f)
}

/// The model's input tensor (NCHW, `x/127.5 − 1`) back to packed RGB8.
pub fn input_to_rgb(x: &[f32], side: usize) -> Vec<u8> {
    let plane = side * side;
    assert_eq!(x.len(), 3 * plane);
    (0..plane)
        .flat_map(|p| {
            (0..3).map(move |c| ((x[c * plane + p] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
        })
        .collect()
}

/// Bilinear sample of an `h × w` grid whose cell centres sit at `(i + ½)·side/h` in a
/// `side`-pixel square, at pixel `(py, px)`; edges clamp.
fn sample(values: &[f32], h: usize, w: usize, side: usize, py: usize, px: usize) -> f32 {
    let fy = ((py as f32 + 0.5) * h as f32 / side as f32 - 0.5).clamp(0.0, (h - 1) as f32);
    let fx = ((px as f32 + 0.5) * w as f32 / side as f32 - 0.5).clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (ty, tx) = (fy - y0 as f32, fx - x0 as f32);
    let v = |y: usize, x: usize| values[y * w + x];
    let top = v(y0, x0) * (1.0 - tx) + v(y0, x1) * tx;
    let bottom = v(y1, x0) * (1.0 - tx) + v(y1, x1) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// The class map over the picture the model saw (`rgb`, `side × side`): positive evidence,
/// scaled to the map's maximum, blended at 55 %, with the peak cell outlined in white.
pub fn overlay(rgb: &[u8], side: usize, map: &ClassMap) -> RgbImage {
    assert_eq!(rgb.len(), side * side * 3);
    let top = map.values.iter().copied().fold(0f32, f32::max);
    let scale = if top > 0.0 { 1.0 / top } else { 0.0 };
    let mut img = RgbImage::new(side as u32, side as u32);
    for py in 0..side {
        for px in 0..side {
            let t = sample(&map.values, map.h, map.w, side, py, px).max(0.0) * scale;
            let c = ramp(&HEAT, t);
            let i = (py * side + px) * 3;
            let blend = |k: usize| (rgb[i + k] as f32 * 0.45 + c[k] * 0.55).round() as u8;
            img.put_pixel(
                px as u32,
                py as u32,
                image::Rgb([blend(0), blend(1), blend(2)]),
            );
        }
    }
    // Peak cell outline (2 px).
    let (cy, cx) = map.peak;
    let (y0, y1) = (cy * side / map.h, ((cy + 1) * side / map.h).min(side) - 1);
    let (x0, x1) = (cx * side / map.w, ((cx + 1) * side / map.w).min(side) - 1);
    for y in y0..=y1 {
        for x in x0..=x1 {
            if y <= y0 + 1 || y + 1 >= y1 || x <= x0 + 1 || x + 1 >= x1 {
                img.put_pixel(x as u32, y as u32, image::Rgb([255, 255, 255]));
            }
        }
    }
    img
}

/// A grid of channel images: `channels` planes of `h × w`, each scaled to its own range,
/// enlarged (nearest) to `tile` pixels, `cols` per row, 2-px gaps.
pub fn channel_grid(channels: &[&[f32]], h: usize, w: usize, cols: usize, tile: usize) -> RgbImage {
    let cols = cols.clamp(1, channels.len().max(1));
    let rows = channels.len().div_ceil(cols);
    let gap = 2;
    let (tw, th) = (tile, (tile * h).div_ceil(w.max(1)).max(1));
    let mut img = RgbImage::from_pixel(
        (cols * (tw + gap) + gap) as u32,
        (rows * (th + gap) + gap) as u32,
        image::Rgb([255, 255, 255]),
    );
    for (k, ch) in channels.iter().enumerate() {
        let lo = ch.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = ch.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        let (ox, oy) = (gap + (k % cols) * (tw + gap), gap + (k / cols) * (th + gap));
        for y in 0..th {
            for x in 0..tw {
                let v = ch[(y * h / th) * w + x * w / tw];
                let c = ramp(&ACT, (v - lo) / span);
                img.put_pixel(
                    (ox + x) as u32,
                    (oy + y) as u32,
                    image::Rgb(c.map(|v| v.round() as u8)),
                );
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_is_hottest_at_the_peak_and_outlines_it() {
        let side = 70;
        let rgb = vec![128u8; side * side * 3];
        let mut values = vec![0f32; 49];
        values[2 * 7 + 5] = 3.0;
        let map = ClassMap {
            class: 0,
            h: 7,
            w: 7,
            values,
            logit: 3.0,
            bias: 0.0,
            peak: (2, 5),
        };
        let img = overlay(&rgb, side, &map);
        // Centre of the peak cell is red-dominated; a far corner is blue-dominated.
        let p = img.get_pixel(55, 25).0;
        assert!(p[0] > p[2], "{p:?}");
        let q = img.get_pixel(3, 66).0;
        assert!(q[2] > q[0], "{q:?}");
        assert_eq!(img.get_pixel(50, 20).0, [255, 255, 255], "outline");
    }

    #[test]
    fn grid_has_one_tile_per_channel_and_scales_each_to_its_range() {
        let a = [0.0f32, 1.0, 2.0, 3.0];
        let b = [10.0f32, 10.0, 10.0, 20.0];
        let img = channel_grid(&[&a, &b, &a], 2, 2, 2, 4);
        assert_eq!((img.width(), img.height()), (2 + 2 * 6, 2 + 2 * 6));
        // Tile 0 top-left (value 0) is the ramp's black; its bottom-right (max) is pale.
        assert_eq!(img.get_pixel(2, 2).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(5, 5).0, [252, 250, 190]);
        // The empty fourth cell stays white.
        assert_eq!(img.get_pixel(10, 10).0, [255, 255, 255]);
    }

    #[test]
    fn input_round_trips_to_pixels() {
        let px = [0u8, 127, 255, 10, 20, 30];
        let side = 1;
        let x: Vec<f32> = [0, 1, 2]
            .iter()
            .map(|&c| px[c] as f32 / 127.5 - 1.0)
            .collect();
        assert_eq!(input_to_rgb(&x, side), vec![0, 127, 255]);
    }
}
