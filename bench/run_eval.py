#!/usr/bin/env python3
"""`make eval`: accuracy of teachcam's default backbone + Rust head on real photos.

    python bench/run_eval.py --teachcam target/release/teachcam --data ../shared/data [--precisions w8,f32]

Uses the evaluation datasets in ../shared/data (not part of the repository). For each
dataset and precision: `teachcam embed` (train/ and val/), `teachcam train` on train/,
`teachcam eval --json` on val/, and scikit-learn's LogisticRegression on the very same
embedding cache (tools/probe_sklearn.py) as the reference. Also reports the mean cosine
between each precision's embeddings and the float model's (same images), and the wall time
of `teachcam train` from a cache. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from tce import read_tce  # noqa: E402

DATASETS = ["hymenoptera", "cats_vs_dogs", "oxford_pets37"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", default=str(ROOT / "target/release/teachcam"))
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--precisions", default="w8,f32")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "eval")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--input-size", type=int, default=224)
    args = ap.parse_args()
    tc = [args.teachcam, "--input-size", str(args.input_size)]
    sfx = "" if args.input_size == 224 else f"_{args.input_size}"
    precisions = args.precisions.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for ds in args.datasets.split(","):
        root = args.data / ds
        if not root.is_dir():
            print(f"error: {root} not found (the evaluation datasets live in ../shared/data)", file=sys.stderr)
            return 2
        caches = {}
        for p in precisions:
            cache = args.work / f"{ds}_{p}{sfx}.tce"
            head = args.work / f"{ds}_{p}{sfx}.head"
            if not cache.is_file():
                subprocess.run([*tc, "embed", str(root), "--out", str(cache), "--precision", p], check=True)
            caches[p] = cache
            t = time.perf_counter()
            subprocess.run([*tc, "train", str(cache), "--out", str(head), "--precision", p], check=True,
                           capture_output=True)
            train_s = time.perf_counter() - t
            ev = json.loads(subprocess.run([*tc, "eval", str(cache), "--head", str(head), "--json"],
                                           check=True, capture_output=True, text=True).stdout)
            sk = json.loads(subprocess.run([sys.executable, str(ROOT / "tools/probe_sklearn.py"), str(cache), "--json"],
                                           check=True, capture_output=True, text=True).stdout)
            rows.append({"dataset": ds, "precision": p, "accuracy": ev["accuracy"], "n_val": ev["count"],
                         "sklearn_accuracy": sk["val_accuracy"], "train_wall_s": train_s,
                         "n_train": sk["n_train"], "classes": len(ev["classes"])})
        if "f32" in caches:
            ref = read_tce(caches["f32"])
            for p, c in caches.items():
                e = read_tce(c)
                assert e.paths == ref.paths
                a = e.embeddings / np.linalg.norm(e.embeddings, axis=1, keepdims=True)
                b = ref.embeddings / np.linalg.norm(ref.embeddings, axis=1, keepdims=True)
                cos = (a * b).sum(1)
                for r in rows:
                    if r["dataset"] == ds and r["precision"] == p:
                        r["mean_cosine_to_f32"] = float(cos.mean())
                        r["min_cosine_to_f32"] = float(cos.min())
    print("\n| dataset | precision | classes | train / val | teachcam head accuracy | scikit-learn LogisticRegression "
          "| mean (min) cosine to f32 | `teachcam train` wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cos = f"{r['mean_cosine_to_f32']:.4f} ({r['min_cosine_to_f32']:.3f})" if "mean_cosine_to_f32" in r else "n/a"
        print(f"| {r['dataset']} | {r['precision']} | {r['classes']} | {r['n_train']} / {r['n_val']} | "
              f"{r['accuracy']:.4f} | {r['sklearn_accuracy']:.4f} | {cos} | {r['train_wall_s'] * 1000:.0f} ms |")
    for r in rows:
        r["input_size"] = args.input_size
    (args.work / f"eval{sfx}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
