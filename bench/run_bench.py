#!/usr/bin/env python3
"""`make bench`: tract (through teachcam) and onnxruntime on the same model files, same run.

    python bench/run_bench.py --teachcam target/release/teachcam [--runs 50] [--rounds 3]

For every precision variant it alternates `teachcam bench --json` and the onnxruntime
benchmark (bench/ort_bench.py) for --rounds rounds, so machine-speed drift hits both sides,
and reports the median of the per-round medians. Both sides use 1 thread. Then it prints:
the latency table with tract/onnxruntime ratios (per file, and against onnxruntime's best
variant), the per-operator profile of the default variant, head training and prediction
times, and the peak RSS of `teachcam classify` (GNU time). Figures are whole-machine
measurements on whatever this runs on; quote ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ["f32", "w8", "qdq", "qop"]
FILES = {p: f"mobilenetv2_{p}.onnx" for p in PRECISIONS}


def run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", default=str(ROOT / "target/release/teachcam"))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out", type=Path, help="also write all figures here")
    args = ap.parse_args()
    tc = args.teachcam
    models = ROOT / "models"

    tract: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    ort: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    ort_version = "?"
    for r in range(args.rounds):
        for p in PRECISIONS:
            tract[p].append(run_json([tc, "bench", "--json", "--precision", p, "--runs", str(args.runs)]))
            o = run_json([sys.executable, str(ROOT / "bench/ort_bench.py"), str(models / FILES[p]),
                          "--runs", str(args.runs), "--warmup", "5", "--json"])
            ort_version = o.get("onnxruntime_version", ort_version)
            ort[p].append(o["models"][FILES[p]])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(x[key] for x in rows)

    table = {}
    for p in PRECISIONS:
        table[p] = {
            "size_mb": (models / FILES[p]).stat().st_size / 1e6,
            "tract_median_ms": med(tract[p], "backbone_ms_median"),
            "tract_p95_ms": med(tract[p], "backbone_ms_p95"),
            "ort_median_ms": med(ort[p], "median_ms"),
            "ort_p95_ms": med(ort[p], "p95_ms"),
        }
    best_ort = min(table.values(), key=lambda t: t["ort_median_ms"])["ort_median_ms"]
    best_ort_name = min(PRECISIONS, key=lambda p: table[p]["ort_median_ms"])
    fastest_float = table["f32"]["tract_median_ms"]
    print(f"\nBackbone latency, 1 thread, median of {args.rounds} rounds x {args.runs} runs "
          f"(onnxruntime {ort_version}):\n")
    print("| variant | size MB | tract median ms | tract p95 ms | onnxruntime median ms | tract/onnxruntime (same file) "
          f"| tract/onnxruntime best ({best_ort_name}) | tract vs tract f32 |")
    print("|---|---|---|---|---|---|---|---|")
    for p in PRECISIONS:
        t = table[p]
        t["ratio_same_file"] = t["tract_median_ms"] / t["ort_median_ms"]
        t["ratio_vs_ort_best"] = t["tract_median_ms"] / best_ort
        t["speedup_vs_tract_f32"] = fastest_float / t["tract_median_ms"]
        print(f"| {p}{' (default)' if p == 'w8' else ''} | {t['size_mb']:.1f} | {t['tract_median_ms']:.1f} | "
              f"{t['tract_p95_ms']:.1f} | {t['ort_median_ms']:.1f} | {t['ratio_same_file']:.2f} | "
              f"{t['ratio_vs_ort_best']:.2f} | {t['speedup_vs_tract_f32']:.2f}x |")

    w8 = tract["w8"][-1]
    print("\nOther stages (w8, last round):")
    print(f"  decode 640x480 JPEG   {w8['decode_jpeg_640x480_ms_median']:.2f} ms median")
    print(f"  preprocess 640x480    {w8['preprocess_640x480_ms_median']:.2f} ms median")
    for h in w8["head_predict_us_median"]:
        print(f"  head predict, {h['classes']} classes  {h['us']:.1f} us median")
    for h in w8["train_ms"]:
        print(f"  train head, {h['classes']} classes x {h['examples']} synthetic 1280-d embeddings  {h['ms']:.0f} ms")
    print(f"  model load + optimise {w8['load_ms']:.0f} ms")

    prof = run_json([tc, "bench", "--json", "--profile", "--precision", "w8", "--runs", str(args.runs)])["profile"]
    total = sum(x["ms"] for x in prof)
    print("\nPer-operator profile of the default (w8), tract, 1 thread:\n")
    print("| operator | nodes | ms | share | M multiply-adds |")
    print("|---|---|---|---|---|")
    for x in prof:
        if x["ms"] >= 0.01:
            print(f"| {x['op']} | {x['nodes']} | {x['ms']:.2f} | {100 * x['ms'] / total:.1f} % | {x['mmacs']:.1f} |")

    rss_mb = None
    if Path("/usr/bin/time").exists():
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "d"
            subprocess.run([tc, "synth", str(data), "--train", "4", "--val", "2"], check=True, capture_output=True)
            head = Path(tmp) / "h.head"
            subprocess.run([tc, "train", str(data), "--out", str(head)], check=True, capture_output=True)
            imgs = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
            r = subprocess.run(["/usr/bin/time", "-v", tc, "classify", "--head", str(head), *imgs],
                               capture_output=True, text=True, check=True)
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
            rss_mb = int(m.group(1)) / 1024 if m else None
        print(f"\nPeak RSS of `teachcam classify` on {len(imgs)} images (w8): {rss_mb:.1f} MB")
    else:
        print("\n/usr/bin/time not installed (apt-get install time): peak RSS not measured")

    if args.json_out:
        args.json_out.write_text(json.dumps({"table": table, "profile_w8": prof, "classify_peak_rss_mb": rss_mb,
                                             "tract_raw": tract, "ort_raw": ort}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
