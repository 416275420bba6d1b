#!/usr/bin/env python3
"""`make inspect-figures`: the figures behind docs/looking-inside.md.

    python3 bench/inspect_figures.py --teachcam target/release/teachcam --data ../shared/data

Uses the photo sets in ../shared/data (not part of the repository; nothing from them is
written into the repository). Standard library only. Steps:

1. heads: f32 and int8 heads on cats_vs_dogs/train and an int8 head on hymenoptera/train
   (`teachcam train`; embedding caches are kept in --work and reused);
2. dream: each cats_vs_dogs class with the default settings (seed 0), with the int8 verdict;
   and the total variation of one class's dream at several --tv-weight values;
3. attack: 20 cats_vs_dogs val images (the first 10 of each class by name), towards the other
   class, at eps 1, 2, 4, 8 levels: success rate, median steps, and how many of the
   successful examples also fool the int8 backbone (with its own head);
4. explain: the int8 map of the first N hymenoptera val images of each class (PNG + JSON in
   --work, to be looked at), with the peak cell and the time per call.

Prints markdown tables and writes everything as JSON to --work/figures.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return r.stdout


def head(tc: list[str], data: Path, ds: str, precision: str, work: Path) -> Path:
    out = work / f"{ds}_{precision}.head"
    cache = work / f"{ds}_{precision}.tce"
    if not cache.is_file():
        run([*tc, "--precision", precision, "embed", str(data / ds), "--out", str(cache)])
    if not out.is_file():
        run([*tc, "--precision", precision, "train", str(cache), "--out", str(out), "--seed", "0"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", default=str(ROOT / "target/release/teachcam"))
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "inspect")
    ap.add_argument("--attack-images", type=int, default=20)
    ap.add_argument("--explain-images", type=int, default=6, help="per class")
    ap.add_argument("--skip", default="", help="comma list of: dream,tv,attack,explain")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tc = [args.teachcam]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    for ds in ["cats_vs_dogs", "hymenoptera"]:
        if not (args.data / ds).is_dir():
            print(f"error: {args.data / ds} not found (the photo sets live in ../shared/data)", file=sys.stderr)
            return 2
    figures: dict = {}
    cvd_f32 = head(tc, args.data, "cats_vs_dogs", "f32", work)
    cvd_int8 = head(tc, args.data, "cats_vs_dogs", "int8", work)

    if "dream" not in skip:
        rows = []
        for cls in ["cats", "dogs"]:
            out = work / f"dream_{cls}.png"
            v = json.loads(run([*tc, "dream", "--head", str(cvd_f32), "--class", cls, "--out", str(out),
                                "--check-int8", str(cvd_int8), "--json"]))
            rows.append(v)
            print(f"dream {cls}: p={v['prob']:.3f} (0.9 first at step {v['first_step_at_0_9']}), "
                  f"8-bit PNG float p={v['f32_png_prob']:.3f}, int8 says {v['int8_class']} "
                  f"(p of {cls} {v['int8_prob_of_class']:.3f}), {v['seconds_per_step']:.3f} s/step")
        figures["dream"] = [{k: v for k, v in r.items() if k != "trace"} for r in rows]
        figures["dream_traces"] = {r["class"]: [s["prob"] for s in r["trace"]] for r in rows}

    if "tv" not in skip:
        tv = []
        for w in [0, 300, 1000, 3000, 10000]:
            out = work / f"dream_cats_tv{w}.png"
            v = json.loads(run([*tc, "dream", "--head", str(cvd_f32), "--class", "cats", "--out", str(out),
                                "--tv-weight", str(w), "--json"]))
            tv.append({"tv_weight": w, "tv": v["tv"], "prob": v["prob"]})
        figures["tv"] = tv
        print("\n| --tv-weight | total variation | p(cats) |\n|---|---|---|")
        for r in tv:
            print(f"| {r['tv_weight']} | {r['tv']:.5f} | {r['prob']:.3f} |")

    if "attack" not in skip:
        n = args.attack_images // 2
        imgs = []
        for cls in ["cats", "dogs"]:
            files = sorted((args.data / "cats_vs_dogs" / "val" / cls).iterdir())[:n]
            imgs += [(cls, f) for f in files]
        results = []
        for eps in [1, 2, 4, 8]:
            for cls, f in imgs:
                target = "dogs" if cls == "cats" else "cats"
                out = work / f"attack_{eps}_{f.stem}.png"
                v = json.loads(run([*tc, "attack", str(f), "--head", str(cvd_f32), "--target", target,
                                    "--eps", str(eps), "--out", str(out), "--check-int8", str(cvd_int8),
                                    "--json"]))
                v["true"] = cls
                results.append(v)
        figures["attack"] = results
        print("\n| ε | success (float) | median steps | also fool int8 | int8 right on the original |")
        print("|---|---|---|---|---|")
        for eps in [1, 2, 4, 8]:
            rs = [r for r in results if r["eps"] == eps]
            ok = [r for r in rs if r["success"] and r["f32_png_class"] == r["target"]]
            steps = statistics.median([r["steps"] for r in ok]) if ok else float("nan")
            fool8 = sum(1 for r in ok if r["int8_fooled"])
            right8 = sum(1 for r in rs if r["int8_before"] == r["true"])
            print(f"| {eps}/255 | {len(ok)}/{len(rs)} | {steps:g} | {fool8}/{len(ok)} | {right8}/{len(rs)} |")
        right = sum(1 for r in results if r["eps"] == 1 and r["before"] == r["true"])
        print(f"(float head right on {right}/{len(imgs)} originals)")

    if "explain" not in skip:
        hym = head(tc, args.data, "hymenoptera", "int8", work)
        rows = []
        for cls in ["ants", "bees"]:
            files = sorted((args.data / "hymenoptera" / "val" / cls).iterdir())[: args.explain_images]
            for f in files:
                out = work / f"explain_{cls}_{f.stem}.png"
                js = work / f"explain_{cls}_{f.stem}.json"
                t = time.perf_counter()
                line = run([*tc, "explain", str(f), "--head", str(hym), "--out", str(out), "--json", str(js)])
                wall = time.perf_counter() - t
                v = json.loads(js.read_text())
                rows.append({"image": str(f.relative_to(args.data)), "true": cls, "predicted": v["predicted"],
                             "peak": v["map"]["peak"], "png": str(out), "process_s": wall, "line": line.strip()})
                print(line.strip())
        figures["explain"] = rows
    (work / "figures.json").write_text(json.dumps(figures, indent=1))
    print(f"\nwrote {work / 'figures.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
