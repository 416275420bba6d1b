#!/usr/bin/env python3
"""teachcam's int8 backbone against onnxruntime on the same files, one thread each.

For each backbone, with this CPU's features and again with VNNI hidden from teachcam
(TEACHCAM_CPU_MASK=vnni; onnxruntime cannot be masked, so it always runs with every feature),
rounds alternate `teachcam bench` (int8, --threads 1) and bench/ort_bench.py on every int8 file
of that backbone (QOperator, and QDQ where shipped); the ratio is teachcam's median over
onnxruntime's best file's median. Then one per-operator profile of each side.

    python bench/parity_bench.py [--teachcam target/release/teachcam] [--rounds 3] [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = {
    "mobilenetv2": ["mobilenetv2_qop.onnx", "mobilenetv2_qdq.onnx"],
    "efficientnet-lite2": ["efficientnet_lite2_qop.onnx"],
}


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}).stdout
    return json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", default=str(ROOT / "target/release/teachcam"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    models = ROOT / "models"
    ort = [sys.executable, str(ROOT / "bench/ort_bench.py")]
    masks = {"native": "", "vnni masked": "vnni"}
    res: dict = {"latency": {}, "profiles": {}}
    print("| backbone | teachcam CPU features | teachcam int8 median ms | onnxruntime best file | "
          "onnxruntime median ms | teachcam / onnxruntime |")
    print("|---|---|---|---|---|---|")
    for bb, files in FILES.items():
        for label, mask in masks.items():
            tc_ms: list[float] = []
            ort_ms: dict[str, list[float]] = {f: [] for f in files}
            for _ in range(a.rounds):
                r = run_json([a.teachcam, "--backbone", bb, "--precision", "int8", "--threads", "1",
                              "bench", "--json", "--runs", str(a.runs)],
                             {"TEACHCAM_CPU_MASK": mask} if mask else None)
                tc_ms.append(r["backbone_ms_median"])
                o = run_json([*ort, *(str(models / f) for f in files), "--runs", str(a.runs),
                              "--warmup", "5", "--json"])
                for f in files:
                    ort_ms[f].append(o["models"][f]["median_ms"])
            best = min(files, key=lambda f: statistics.median(ort_ms[f]))
            t, b = statistics.median(tc_ms), statistics.median(ort_ms[best])
            res["latency"][f"{bb} {label}"] = {"teachcam_ms": t, "ort_file": best, "ort_ms": b,
                                               "ratio": t / b}
            print(f"| {bb} | {label} | {t:.2f} | {best} | {b:.2f} | {t / b:.2f} |")
    for bb, files in FILES.items():
        prof = run_json([a.teachcam, "--backbone", bb, "--precision", "int8", "--threads", "1",
                         "bench", "--json", "--profile", "--runs", str(a.runs)])["profile"]
        oprof = run_json([*ort, str(models / files[0]), "--profile", "--runs", str(a.runs),
                          "--json"])[files[0]]
        res["profiles"][bb] = {"teachcam": prof, "onnxruntime": oprof}
        for name, p in (("teachcam int8", prof), (f"onnxruntime {files[0]}", oprof)):
            total = sum(x["ms"] for x in p)
            print(f"\n{bb}, {name}, 1 thread, per operator (sum {total:.2f} ms):\n")
            print("| operator | nodes | ms | share |")
            print("|---|---|---|---|")
            for x in p:
                if x["ms"] >= 0.01:
                    print(f"| {x['op']} | {x['nodes']} | {x['ms']:.2f} | {100 * x['ms'] / total:.1f} % |")
    if a.json_out:
        a.json_out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
