"""Reference image preprocessing for the teachcam backbone (owns the one true definition).

This module is the specification that the Rust side (src/) must reproduce
bit-for-bit up to float rounding; golden fixtures in tests/fixtures/golden/ are
generated with it.  It has no dependencies beyond numpy (and Pillow for
decoding files).

Definition, for an RGB uint8 image of H rows x W columns and output size S:

1. Centre crop.  ``short = min(H, W)``; crop side ``c = short * 224 / 256``
   (a float, independent of S: the crop/resize ratio of the classic
   "resize 256, crop 224" recipe).  Crop origin ``x0 = (W - c) / 2``,
   ``y0 = (H - c) / 2`` (floats, no rounding).
2. Resample the crop to S x S with a separable triangle (bilinear) filter
   whose support widens when shrinking (anti-aliasing):
   ``s = c / S``; ``support = max(s, 1.0)``.  For output column j the centre in
   source coordinates is ``x0 + (j + 0.5) * s``.  Source column k (whose centre
   is at ``k + 0.5``) gets weight ``max(0, 1 - |k + 0.5 - centre| / support)``.
   Only k in [0, W-1] take part (no clamping or edge replication: out-of-range
   taps are simply skipped), and each output's weights are normalised to sum
   to 1.  Rows use the same rule with y0 and H.  Note the taps may reach pixels
   just outside the crop square (but inside the image); that is intended.
3. ``out[ch] = Wy @ img[:, :, ch] @ Wx.T`` with Wy (S x H) and Wx (S x W) the
   weight matrices above, computed in **float64** (weights and accumulation),
   then scaled ``v / 127.5 - 1`` and cast to float32.
4. Layout NCHW, channel order R, G, B, shape [1, 3, S, S].

Decoding: ``PIL.Image.open(path).convert('RGB')``.  EXIF orientation is NOT
applied (no ``ImageOps.exif_transpose``); the pixel array is used as stored.
A float32 implementation (as in Rust) agrees with this one to ~1e-5.
"""

from __future__ import annotations

import numpy as np

CROP_RATIO = 224.0 / 256.0
DEFAULT_SIZE = 224


def resample_weights(n_in: int, origin: float, crop: float, size: int) -> np.ndarray:
    """Return the (size x n_in) float64 triangle-filter matrix for one axis."""
    s = crop / size
    support = max(s, 1.0)
    centres = origin + (np.arange(size, dtype=np.float64) + 0.5) * s  # (size,)
    taps = np.arange(n_in, dtype=np.float64) + 0.5  # (n_in,)
    w = 1.0 - np.abs(taps[None, :] - centres[:, None]) / support
    np.maximum(w, 0.0, out=w)
    sums = w.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):  # cannot happen for centres inside the image
        raise ValueError("empty resampling window")
    return w / sums


def crop_box(h: int, w: int) -> tuple[float, float, float]:
    """Return (x0, y0, c): float origin and side of the centred square crop."""
    c = min(h, w) * CROP_RATIO
    return (w - c) / 2.0, (h - c) / 2.0, c


def preprocess_array(rgb: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Preprocess an (H, W, 3) uint8 RGB array into a float32 [1, 3, S, S] tensor."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB array, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    x0, y0, c = crop_box(h, w)
    wy = resample_weights(h, y0, c, size)
    wx = resample_weights(w, x0, c, size)
    img = rgb.astype(np.float64)
    out = np.empty((1, 3, size, size), dtype=np.float32)
    for ch in range(3):
        v = wy @ img[:, :, ch] @ wx.T
        out[0, ch] = (v / 127.5 - 1.0).astype(np.float32)
    return out


def load_rgb(path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 array (no EXIF transpose)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def preprocess_file(path, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Decode ``path`` and preprocess it (see module docstring)."""
    return preprocess_array(load_rgb(path), size)
