#!/usr/bin/env python3
"""`make bench-fewshot`: which backbone teaches more from a few presses, and at what cost.

For every shipped backbone, on every real photo set in ../shared/data (not in the repository)
and on a generated `teachcam synth` set, this runs:

- `teachcam --backbone B fewshot SET --json`: accuracy over presses per class (1, 3, 5, 10),
  several random draws, each press one frame, a simulated burst, with training variations, or
  both; and the open-set figures (an untaught class called "unknown" at the device's
  threshold). The protocol is in src/app/fewshot.rs.
- `teachcam --backbone B train SET/train` + `eval SET/val --json`: full-data accuracy.
- `teachcam --backbone B bench --json`, the backbones alternated in rounds: int8 backbone
  latency on this machine, as a ratio to MobileNetV2's in the same run.
- With --arm: bench/arm_bench.py per backbone (int8 and f32 under qemu-user on Cortex-A72,
  A76 and A7): guest instructions per image, the ARM proxy (not a board time).

It prints markdown tables (also written to target/bench-fewshot.md) and the whole record as
JSON (--json-out). Slow (minutes per backbone and set); never part of CI.

    python3 bench/fewshot_bench.py --teachcam target/release/teachcam --data ../shared/data \\
        [--draws 5] [--presses 1,3,5,10] [--arm --plugin target/qemu-icount/libicount.so]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKBONES = ["mobilenetv2", "efficientnet-lite2"]
DATASETS = ["hymenoptera", "cats_vs_dogs", "oxford_pets37"]
MODES = ["plain", "augment", "burst", "burst+augment"]


def run(cmd: list[str], **kw) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(cmd)}\n{p.stderr.strip()[-3000:]}")
    return p.stdout


def fewshot(tc: str, backbone: str, root: Path, a) -> dict:
    out = run([tc, "--backbone", backbone, "fewshot", str(root), "--json", "--draws",
               str(a.draws), "--presses", a.presses, "--seed", str(a.seed)])
    return json.loads(out)


def full_accuracy(tc: str, backbone: str, root: Path, work: Path) -> float:
    head = work / f"{root.name}-{backbone}.head"
    run([tc, "--backbone", backbone, "train", str(root / "train"), "--out", str(head),
         "--seed", "1"])
    return json.loads(run([tc, "--backbone", backbone, "eval", str(root / "val"), "--head",
                           str(head), "--json"]))["accuracy"]


def latency(tc: str, rounds: int, runs: int) -> dict:
    """Median backbone ms per backbone, the backbones alternated in `rounds` rounds."""
    got: dict[str, list[float]] = {b: [] for b in BACKBONES}
    for _ in range(rounds):
        for b in BACKBONES:
            out = json.loads(run([tc, "--backbone", b, "bench", "--runs", str(runs), "--json"]))
            got[b].append(out["backbone_ms_median"])
    base = statistics.median(got[BACKBONES[0]])
    return {b: {"rounds_ms": v, "median_ms": statistics.median(v),
                "ratio_to_mobilenetv2": statistics.median(v) / base} for b, v in got.items()}


def arm(a, backbone: str) -> dict:
    out = ROOT / "target" / f"bench-arm-{backbone}.json"
    run([sys.executable, str(ROOT / "bench" / "arm_bench.py"), "--host", a.teachcam,
         "--plugin", a.plugin, "--precisions", "int8,f32", "--backbone", backbone,
         "--json-out", str(out)], cwd=ROOT)
    rows = json.loads(out.read_text())["rows"]
    return {r["config"]: {"precision": r["precision"], "insns_per_image": r["insns_per_image"]}
            for r in rows if r["precision"] == "int8"}


def cell(s: dict) -> str:
    return f"{s['mean']:.3f} ({s['min']:.2f}–{s['max']:.2f})"


def tables(rec: dict) -> str:
    lines = []
    presses = rec["presses"]
    lines.append("### Backbones: accuracy, few-shot curve (plain presses), cost\n")
    lines.append(f"Few-shot: mean (lowest–highest) over {rec['draws']} draws; int8 default "
                 "precision; accuracy of the head's best class on all of val/.\n")
    head = ["set", "backbone", "full data"] + [f"{p} press{'es' if p > 1 else ''}"
                                                for p in presses]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for ds, per in rec["sets"].items():
        for b in BACKBONES:
            r = per[b]
            acc = r["fewshot"]["accuracy"]["plain"]
            cells = [ds, b, f"{r['full_accuracy']:.3f}"]
            cells += [cell(acc[str(p)]) if str(p) in acc else "–" for p in presses]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lat = rec["latency"]
    cost = ["backbone", "int8 ms here (median of rounds)", "× MobileNetV2"]
    arm_cfgs = sorted({c for b in BACKBONES for c in rec.get("arm", {}).get(b, {})})
    cost += [f"{c} instr/image (proxy)" for c in arm_cfgs]
    lines.append("| " + " | ".join(cost) + " |")
    lines.append("|" + "---|" * len(cost))
    for b in BACKBONES:
        cells = [b, f"{lat[b]['median_ms']:.2f}", f"{lat[b]['ratio_to_mobilenetv2']:.2f}"]
        for c in arm_cfgs:
            v = rec.get("arm", {}).get(b, {}).get(c)
            cells.append(f"{v['insns_per_image'] / 1e6:.0f} M" if v else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("### What a few presses teach: each mode, both backbones\n")
    head = ["set", "backbone", "mode"] + [str(p) for p in presses]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for ds, per in rec["sets"].items():
        for b in BACKBONES:
            acc = per[b]["fewshot"]["accuracy"]
            for m in MODES:
                if m in acc:
                    cells = [ds, b, m] + [cell(acc[m][str(p)]) if str(p) in acc[m] else "–"
                                          for p in presses]
                    lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("### Open set: an untaught class, at the device's threshold\n")
    head = ["set", "backbone", "mode", "presses", "untaught called unknown",
            "taught called unknown", "taught accuracy"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for ds, per in rec["sets"].items():
        for b in BACKBONES:
            o = per[b]["fewshot"].get("open_set", {})
            for m in ("plain", "burst"):
                if m in o:
                    x = o[m]
                    lines.append(f"| {ds} | {b} | {m} | {x['presses']} | "
                                 f"{cell(x['untaught_unknown'])} | {cell(x['taught_unknown'])} | "
                                 f"{cell(x['taught_accuracy'])} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", default=str(ROOT / "target/release/teachcam"))
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--presses", default="1,3,5,10")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--latency-rounds", type=int, default=3)
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--arm", action="store_true", help="also the qemu instruction proxy")
    ap.add_argument("--plugin", default=str(ROOT / "target/qemu-icount/libicount.so"))
    ap.add_argument("--json-out", default=str(ROOT / "target/bench-fewshot.json"))
    a = ap.parse_args()
    tc = str(Path(a.teachcam).resolve())
    a.teachcam = tc
    started = time.time()
    rec = {"draws": a.draws, "presses": [int(p) for p in a.presses.split(",")], "sets": {}}
    with tempfile.TemporaryDirectory() as w:
        w = Path(w)
        roots = []
        for ds in a.datasets.split(","):
            root = a.data / ds
            if not root.is_dir():
                print(f"error: {root} not found (the photo sets live in ../shared/data)",
                      file=sys.stderr)
                return 2
            roots.append((ds, root))
        run([tc, "synth", str(w / "synth"), "--train", "20", "--val", "20", "--seed", "5"])
        roots.append(("synth", w / "synth"))
        for ds, root in roots:
            rec["sets"][ds] = {}
            for b in BACKBONES:
                t = time.time()
                r = {"fewshot": fewshot(tc, b, root, a),
                     "full_accuracy": full_accuracy(tc, b, root, w)}
                rec["sets"][ds][b] = r
                print(f"{ds} {b}: full {r['full_accuracy']:.3f}, "
                      f"{time.time() - t:.0f} s", flush=True)
    rec["latency"] = latency(tc, a.latency_rounds, a.latency_runs)
    if a.arm:
        rec["arm"] = {b: arm(a, b) for b in BACKBONES}
    rec["elapsed_s"] = time.time() - started
    md = tables(rec)
    print("\n" + md)
    Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json_out).write_text(json.dumps(rec, indent=1))
    (ROOT / "target" / "bench-fewshot.md").write_text(md)
    print(f"wrote {a.json_out} and target/bench-fewshot.md ({rec['elapsed_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
