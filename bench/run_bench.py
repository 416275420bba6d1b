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
PRECISIONS = ["f32", "w8", "qdq", "qop", "int8"]
DEFAULT = "int8"
# int8 is the QOperator file run through teachcam's int8 operators; onnxruntime runs the file.
FILES = {p: f"mobilenetv2_{'qop' if p == 'int8' else p}.onnx" for p in PRECISIONS}
ACCURACY_SETS = ["hymenoptera", "cats_vs_dogs"]


def run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def accuracy(tc: str, data: Path) -> dict:
    """Cosine to f32 and probe accuracy per variant, from bench/run_eval.py (cached embeddings in
    target/eval; the first run embeds every val/train image once per variant)."""
    if not all((data / d).is_dir() for d in ACCURACY_SETS):
        print(f"{data} has no {ACCURACY_SETS}: cosine and accuracy columns skipped", file=sys.stderr)
        return {}
    subprocess.run([sys.executable, str(ROOT / "bench/run_eval.py"), "--teachcam", tc, "--data", str(data),
                    "--precisions", ",".join(PRECISIONS), "--datasets", ",".join(ACCURACY_SETS)],
                   check=True, stdout=subprocess.DEVNULL)
    rows = json.loads((ROOT / "target/eval/eval.json").read_text())
    out: dict[str, dict] = {}
    for p in PRECISIONS:
        mine = [r for r in rows if r["precision"] == p]
        q = {r["dataset"]: r["accuracy"] for r in mine}
        cos = [(r["mean_cosine_to_f32"], r["n_train"] + r["n_val"]) for r in mine if "mean_cosine_to_f32" in r]
        if cos:
            q["cosine_to_f32"] = sum(c * n for c, n in cos) / sum(n for _, n in cos)
        out[p] = q
    return out


def accuracy_at(tc: str, data: Path, size: int) -> dict:
    """Probe accuracy of the default variant at another input size (bench/run_eval.py)."""
    if not all((data / d).is_dir() for d in ACCURACY_SETS):
        return {}
    subprocess.run([sys.executable, str(ROOT / "bench/run_eval.py"), "--teachcam", tc, "--data", str(data),
                    "--precisions", DEFAULT, "--datasets", ",".join(ACCURACY_SETS), "--input-size", str(size)],
                   check=True, stdout=subprocess.DEVNULL)
    sfx = "" if size == 224 else f"_{size}"
    rows = json.loads((ROOT / f"target/eval/eval{sfx}.json").read_text())
    return {r["dataset"]: r["accuracy"] for r in rows if r["precision"] == DEFAULT}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", default=str(ROOT / "target/release/teachcam"))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out", type=Path, help="also write all figures here")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--no-accuracy", action="store_true",
                    help="skip the cosine/probe-accuracy columns (they need ../shared/data)")
    args = ap.parse_args()
    tc = args.teachcam
    models = ROOT / "models"

    tract: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    ort: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    ort_version = "?"
    for r in range(args.rounds):
        for p in PRECISIONS:
            tract[p].append(run_json([tc, "bench", "--json", "--precision", p, "--runs", str(args.runs)]))
            if p == "int8":
                continue  # same file as qop: onnxruntime's figures are qop's
            o = run_json([sys.executable, str(ROOT / "bench/ort_bench.py"), str(models / FILES[p]),
                          "--runs", str(args.runs), "--warmup", "5", "--json"])
            ort_version = o.get("onnxruntime_version", ort_version)
            ort[p].append(o["models"][FILES[p]])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    ort["int8"] = ort["qop"]

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(x[key] for x in rows)

    quality = {} if args.no_accuracy else accuracy(tc, args.data)

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
          f"(onnxruntime {ort_version}); onnxruntime's best variant is {best_ort_name} at "
          f"{best_ort:.2f} ms. Cosine: mean over all images (train and val) of {', '.join(ACCURACY_SETS)}; "
          "accuracy: teachcam's head trained on train/, on val/.\n")
    sets = " | ".join(f"probe accuracy {d}" for d in ACCURACY_SETS)
    print("| variant | file | tract median ms | tract p95 ms | onnxruntime same file ms | onnxruntime best ms "
          f"| tract / onnxruntime best | speed-up vs tract f32 | cosine to f32 | {sets} |")
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(ACCURACY_SETS))
    for p in PRECISIONS:
        t = table[p]
        t["ratio_same_file"] = t["tract_median_ms"] / t["ort_median_ms"]
        t["ratio_vs_ort_best"] = t["tract_median_ms"] / best_ort
        t["speedup_vs_tract_f32"] = fastest_float / t["tract_median_ms"]
        q = quality.get(p, {})
        t.update(q)
        cos = f"{q['cosine_to_f32']:.4f}" if "cosine_to_f32" in q else "n/a"
        accs = " | ".join(f"{q[d]:.4f}" if d in q else "n/a" for d in ACCURACY_SETS)
        print(f"| {p}{' (default)' if p == DEFAULT else ''} | {FILES[p]} | {t['tract_median_ms']:.2f} | "
              f"{t['tract_p95_ms']:.2f} | {t['ort_median_ms']:.2f} | {best_ort:.2f} | "
              f"{t['ratio_vs_ort_best']:.2f} | {t['speedup_vs_tract_f32']:.2f}x | {cos} | {accs} |")

    scaling = {}
    print("\nOne plan per thread (shared weights), all threads busy at once; this machine has "
          f"{os.cpu_count()} cores:\n")
    print("| variant | threads | inferences/s | vs 1 thread | latency median ms | latency p95 ms |")
    print("|---|---|---|---|---|---|")
    for p in (DEFAULT, "w8"):
        base = None
        for n in (1, 2, 4):
            r = run_json([tc, "bench", "--json", "--precision", p, "--runs", str(args.runs), "--concurrent", str(n)])
            if n == 1:
                tput, lm, lp = 1000.0 / r["backbone_ms_median"], r["backbone_ms_median"], r["backbone_ms_p95"]
            else:
                par = r["parallel"]
                tput, lm, lp = par["inferences_per_s"], par["latency_ms_median"], par["latency_ms_p95"]
            base = base or tput
            scaling[f"{p}_{n}"] = {"inferences_per_s": tput, "latency_ms_median": lm, "latency_ms_p95": lp}
            print(f"| {p} | {n} | {tput:.1f} | {tput / base:.2f}x | {lm:.2f} | {lp:.2f} |")

    w8 = tract[DEFAULT][-1]
    print(f"\nOther stages ({DEFAULT}, last round):")
    print(f"  decode 640x480 JPEG   {w8['decode_jpeg_640x480_ms_median']:.2f} ms median")
    print(f"  preprocess 640x480    {w8['preprocess_640x480_ms_median']:.2f} ms median")
    for h in w8["head_predict_us_median"]:
        print(f"  head predict, {h['classes']} classes  {h['us']:.1f} us median")
    for h in w8["train_ms"]:
        print(f"  train head, {h['classes']} classes x {h['examples']} synthetic 1280-d embeddings  {h['ms']:.0f} ms")
    print(f"  model load + optimise {w8['load_ms']:.0f} ms")

    resolution = {}
    print(f"\nInput resolution ({DEFAULT}; `--input-size` / `model.input_size`), 1 thread, tract and onnxruntime "
          "on the same file resized, accuracy as above:\n")
    print(f"| input | tract {DEFAULT} median ms | onnxruntime (qop file) median ms | tract / onnxruntime | "
          + " | ".join(f"probe accuracy {d}" for d in ACCURACY_SETS) + " |")
    print("|---|---|---|---|" + "---|" * len(ACCURACY_SETS))
    for size in (160, 192, 224):
        tr = [run_json([tc, "--input-size", str(size), "bench", "--json", "--precision", DEFAULT,
                        "--runs", str(args.runs)])["backbone_ms_median"] for _ in range(args.rounds)]
        o = [run_json([sys.executable, str(ROOT / "bench/ort_bench.py"), str(models / FILES["qop"]), "--size",
                       str(size), "--runs", str(args.runs), "--json"])["models"][FILES["qop"]]["median_ms"]
             for _ in range(args.rounds)]
        if args.no_accuracy:
            acc = {}
        elif size == 224 and DEFAULT in quality:
            acc = quality[DEFAULT]  # measured above, from the same caches
        else:
            acc = accuracy_at(tc, args.data, size)
        row = {"tract_median_ms": statistics.median(tr), "ort_median_ms": statistics.median(o), **acc}
        resolution[size] = row
        accs = " | ".join(f"{acc[d]:.4f}" if d in acc else "n/a" for d in ACCURACY_SETS)
        print(f"| {size}x{size} | {row['tract_median_ms']:.2f} | {row['ort_median_ms']:.2f} | "
              f"{row['tract_median_ms'] / row['ort_median_ms']:.2f} | {accs} |")

    profiles = {}
    for p in (DEFAULT, "w8", "qop"):
        prof = run_json([tc, "bench", "--json", "--profile", "--precision", p, "--runs", str(args.runs)])["profile"]
        profiles[p] = prof
        total = sum(x["ms"] for x in prof)
        print(f"\nPer-operator profile of {p}, tract, 1 thread (sum {total:.2f} ms):\n")
        print("| operator | nodes | ms | share | M multiply-adds | G multiply-adds/s |")
        print("|---|---|---|---|---|---|")
        for x in prof:
            if x["ms"] >= 0.01:
                rate = f"{x['mmacs'] / x['ms']:.1f}" if x["mmacs"] > 0 else ""
                print(f"| {x['op']} | {x['nodes']} | {x['ms']:.2f} | {100 * x['ms'] / total:.1f} % | "
                      f"{x['mmacs']:.1f} | {rate} |")

    ort_prof = run_json([sys.executable, str(ROOT / "bench/ort_bench.py"), str(models / FILES["qop"]),
                         "--profile", "--runs", str(args.runs), "--json"])[FILES["qop"]]
    total = sum(x["ms"] for x in ort_prof)
    print(f"\nPer-operator profile of onnxruntime on {FILES['qop']} (its node profiler, ORT_ENABLE_ALL, "
          f"1 thread, sum {total:.2f} ms; kernel times only):\n")
    print("| operator | nodes | ms | share |")
    print("|---|---|---|---|")
    for x in ort_prof:
        if x["ms"] >= 0.01:
            print(f"| {x['op']} | {x['nodes']} | {x['ms']:.2f} | {100 * x['ms'] / total:.1f} % |")
    profiles["onnxruntime_qop"] = ort_prof

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
        print(f"\nPeak RSS of `teachcam classify` on {len(imgs)} images ({DEFAULT}): {rss_mb:.1f} MB")
    else:
        print("\n/usr/bin/time not installed (apt-get install time): peak RSS not measured")

    if args.json_out:
        args.json_out.write_text(json.dumps({"table": table, "profiles": profiles, "thread_scaling": scaling,
                                             "resolution": resolution,
                                             "classify_peak_rss_mb": rss_mb, "tract_raw": tract,
                                             "ort_raw": ort}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
