#!/usr/bin/env python3
"""onnxruntime latency benchmark of teachcam's backbone files (owns the ORT half of `make bench`).

    python bench/ort_bench.py models/*.onnx --runs 50 --warmup 5 [--json] [--input golden|random]

Single-threaded and sequential (intra_op 1, inter_op 1, ORT_SEQUENTIAL), CPU
execution provider, graph optimisation ORT_ENABLE_ALL for every model (for the
QDQ file that is onnxruntime's real int8 path; for w8 it is what ORT does with
DequantizeLinear'd weights, which it re-runs each call, so w8 is slow here).
Input: by default the golden test card tests/fixtures/golden/large_640x480.png
run through models/preprocess.py (the product's preprocessing); with
``--input random`` a standard-normal tensor from numpy seed 0.
Each run is timed around session.run; median and p95 (linear interpolation) in ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_PNG = ROOT / "tests" / "fixtures" / "golden" / "large_640x480.png"


def load_sized(path: Path, size: int):
    """The model bytes, with the input resized to size x size when size is not the file's."""
    import onnx

    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if dims[2].dim_value != size:
        dims[2].dim_value = size
        dims[3].dim_value = size
        del m.graph.value_info[:]
    return m.SerializeToString()


def make_session(path: Path, size: int = 224) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(load_sized(path, size), so, providers=["CPUExecutionProvider"])


def make_input(kind: str, shape: list) -> np.ndarray:
    size = int(shape[2])
    if kind == "golden":
        sys.path.insert(0, str(ROOT / "models"))
        from preprocess import preprocess_file

        return preprocess_file(GOLDEN_PNG, size)
    return np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)


def bench(path: Path, runs: int, warmup: int, kind: str, size: int = 224,
          save_dir: Path | None = None) -> dict:
    sess = make_session(path, size)
    inp = sess.get_inputs()[0]
    x = make_input(kind, inp.shape)
    feed = {inp.name: x}
    if save_dir is not None:
        # The first output of one run, to compare what different CPUs' kernels compute.
        np.save(save_dir / f"{path.stem}.npy", sess.run(None, feed)[0])
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.array(times)
    return {
        "median_ms": round(float(np.median(t)), 3),
        "p95_ms": round(float(np.percentile(t, 95)), 3),
        "min_ms": round(float(t.min()), 3),
        "size_mb": round(path.stat().st_size / 1e6, 3),
    }


def profile(path: Path, runs: int, kind: str) -> list[dict]:
    """Per-operator-type time of onnxruntime on `path` (its own node profiler), median per run."""
    import tempfile

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed = {inp.name: make_input(kind, inp.shape)}
        for _ in range(5):
            sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, list[float]] = {}
    nodes: dict[str, set] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op.setdefault(op, []).append(e["dur"] / 1e3)
            nodes.setdefault(op, set()).add(e["name"])
    total_runs = runs + 5
    rows = [{"op": op, "nodes": len(nodes[op]), "ms": sum(v) / total_runs} for op, v in per_op.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def main() -> int:
    ap = argparse.ArgumentParser(description="onnxruntime single-thread latency per model")
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--input", choices=["golden", "random"], default="golden")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true", help="per-operator-type time instead of latency")
    ap.add_argument("--size", type=int, default=224, help="input side (the model is resized)")
    ap.add_argument("--save-output", type=Path, metavar="DIR",
                    help="also save each model's first output of one extra run as DIR/<model>.npy")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if args.profile:
        out = {p.name: profile(p, args.runs, args.input) for p in args.models}
        print(json.dumps(out) if args.json else json.dumps(out, indent=1))
        return 0
    results = {}
    for path in args.models:
        results[path.name] = bench(path, args.runs, args.warmup, args.input, args.size,
                                   args.save_output)
        if not args.json:
            r = results[path.name]
            print(f"{path.name:28} median {r['median_ms']:8.2f} ms   p95 {r['p95_ms']:8.2f} ms", flush=True)
    best = min(results, key=lambda k: results[k]["median_ms"])
    out = {
        "onnxruntime_version": ort.__version__,
        "settings": {
            "intra_op_num_threads": 1,
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "provider": "CPUExecutionProvider",
            "runs": args.runs,
            "warmup": args.warmup,
            "input": "golden large_640x480.png, models/preprocess.py" if args.input == "golden"
            else "standard normal, numpy default_rng(0)",
            "machine": platform.machine(),
        },
        "models": results,
        "best": {"model": best, "median_ms": results[best]["median_ms"]},
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"best: {best} ({results[best]['median_ms']:.2f} ms median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
