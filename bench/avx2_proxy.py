#!/usr/bin/env python3
"""teachcam and onnxruntime both without VNNI: guest instructions under qemu-x86_64 as a proxy.

This machine's CPU has AVX-512 VNNI and onnxruntime cannot be told to ignore it, so
`make bench-parity` can only mask VNNI on teachcam's side. qemu-x86_64's emulated CPU models
can hide it from both: `-cpu Haswell` offers AVX2 and FMA and no AVX-512 at all (qemu's TCG
emulates none of it), so both programs pick their AVX2 kernels from CPUID. Each program runs
under qemu with the instruction-count plugin (cross/qemu-icount) over a small and a large
number of inferences; the difference divided by the extra inferences is the count per
inference. That is a PROXY: instruction counts, not time (a vpmaddwd and a mov count the same).

- teachcam: `teachcam --threads 1 classify` over 1 and 6 generated 256x192 JPEG scenes, so
  each inference also includes one JPEG decode and the resize to 224 (onnxruntime is handed a
  ready tensor): this biases the comparison against teachcam (not subtracted).
- onnxruntime: bench/ort_bench.py with 1 and 6 runs, one thread, every int8 file of the
  backbone; the best file counts.

The plugin's counter is exact while one guest thread runs at a time. teachcam with
--threads 1 runs one (checked: the run fails otherwise); the onnxruntime process starts idle
helper threads, so its count could lose increments if two ever ran at once. The number of
guest threads is printed with each onnxruntime count; repeated runs are the check.

    python bench/avx2_proxy.py --teachcam target/release/teachcam --plugin libicount.so \
        [--cpus Haswell] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FILES = {
    "mobilenetv2": ["mobilenetv2_qop.onnx", "mobilenetv2_qdq.onnx"],
    "efficientnet-lite2": ["efficientnet_lite2_qop.onnx"],
}
SMALL, LARGE = 1, 6


def run(cmd: list[str], env: dict | None = None) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        err = "\n".join(ln for ln in p.stderr.splitlines() if "TCG doesn't support" not in ln)
        raise SystemExit(f"FAIL: {' '.join(map(str, cmd[:10]))} ... exited {p.returncode}:\n"
                         f"{err[-2000:]}")
    return p.stdout


def counted(cpu: str, plugin: str, cmd: list[str], out_file: Path) -> tuple[int, int, float, str]:
    """Guest instructions and guest threads of one whole run under qemu-x86_64, its wall time
    and its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QEMU_", "TEACHCAM_"))}
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    t = time.time()
    out = run(["qemu-x86_64", "-cpu", cpu, "-plugin", f"{plugin},out={out_file}", *cmd], env)
    wall = time.time() - t
    fields = dict(line.split() for line in out_file.read_text().splitlines())
    return int(fields["insns"]), int(fields["vcpus"]), wall, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", default=str(ROOT / "target/release/teachcam"))
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--cpus", default="Haswell",
                    help="qemu -cpu models, comma-separated (Haswell: AVX2 + FMA, no AVX-512)")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    tc = str(Path(a.teachcam).resolve())
    plugin = str(Path(a.plugin).resolve())
    models = ROOT / "models"
    ort = [sys.executable, str(ROOT / "bench/ort_bench.py")]
    rows = []
    with tempfile.TemporaryDirectory() as w:
        w = Path(w)
        run([tc, "synth", str(w / "scenes"), "--train", "6", "--val", "2", "--seed", "11"])
        images = sorted(str(p) for p in (w / "scenes" / "val").glob("*/*.jpg"))[:LARGE]
        assert len(images) == LARGE, "synth wrote 2 val images of each of 3 kinds"
        for cpu in a.cpus.split(","):
            for bb, files in FILES.items():
                head = w / f"{bb}.head"
                # The head is trained natively; under qemu only classification is counted.
                run([tc, "--backbone", bb, "--precision", "int8", "train",
                     str(w / "scenes" / "train"), "--out", str(head), "--seed", "1"])
                info = run(["qemu-x86_64", "-cpu", cpu, tc, "--backbone", bb, "--precision",
                            "int8", "info"])
                kernel = next((ln.strip() for ln in info.splitlines()
                               if ln.startswith("cpu")), "?")
                tc_counts = {}
                classify = [tc, "--backbone", bb, "--precision", "int8", "--threads", "1",
                            "classify", "--head", str(head), "--json"]
                native_out = run([*classify, *images[:LARGE]])
                for n in (SMALL, LARGE):
                    insns, vcpus, wall, out = counted(cpu, plugin, [*classify, *images[:n]],
                                                      w / "icount.txt")
                    if n == LARGE:
                        tc_same = out == native_out
                    if vcpus != 1:
                        raise SystemExit(f"FAIL: teachcam ran {vcpus} guest threads: the count "
                                         "is exact only for one")
                    tc_counts[n] = insns
                    print(f"{cpu} {bb} teachcam {n} image(s): {insns / 1e6:.1f} M "
                          f"({wall:.1f} s)", flush=True)
                tc_per = (tc_counts[LARGE] - tc_counts[SMALL]) / (LARGE - SMALL)
                ort_per, ort_same = {}, {}
                for f in files:
                    c = {}
                    nat, emu = w / "native", w / "emulated"
                    nat.mkdir(exist_ok=True)
                    emu.mkdir(exist_ok=True)
                    run([*ort, str(models / f), "--runs", "1", "--warmup", "0", "--json",
                         "--save-output", str(nat)])
                    for n in (SMALL, LARGE):
                        # Both runs save one extra output, so the difference cancels it.
                        insns, vcpus, wall, _ = counted(
                            cpu, plugin,
                            [*ort, str(models / f), "--runs", str(n), "--warmup", "0", "--json",
                             "--save-output", str(emu)],
                            w / "icount.txt")
                        c[n] = (insns, vcpus)
                        print(f"{cpu} {bb} onnxruntime {f} {n} run(s): {insns / 1e6:.1f} M, "
                              f"{vcpus} guest threads ({wall:.1f} s)", flush=True)
                    ort_per[f] = (c[LARGE][0] - c[SMALL][0]) / (LARGE - SMALL)
                    a_nat = np.load(nat / f"{Path(f).stem}.npy")
                    a_emu = np.load(emu / f"{Path(f).stem}.npy")
                    diff = np.abs(a_nat.astype(np.float64) - a_emu.astype(np.float64))
                    ort_same[f] = {"identical": bool(np.array_equal(a_nat, a_emu)),
                                   "differing": int((diff > 0).sum()), "of": int(diff.size),
                                   "max_abs_diff": float(diff.max()),
                                   "cosine": float(np.dot(a_nat.ravel(), a_emu.ravel())
                                                   / np.linalg.norm(a_nat)
                                                   / np.linalg.norm(a_emu))}
                    print(f"{cpu} {bb} onnxruntime {f}: output here vs under -cpu {cpu}: "
                          f"{ort_same[f]}", flush=True)
                best = min(ort_per, key=ort_per.get)
                rows.append({"cpu": cpu, "backbone": bb, "teachcam_kernel_line": kernel,
                             "teachcam_insns_per_image": tc_per, "teachcam_counts": tc_counts,
                             "teachcam_same_output_as_native": tc_same,
                             "onnxruntime_insns_per_run": ort_per, "onnxruntime_best": best,
                             "onnxruntime_output_vs_native": ort_same,
                             "ratio": tc_per / ort_per[best]})
    print()
    print("| qemu -cpu | backbone | teachcam M instructions / image (incl. JPEG decode) | "
          "onnxruntime best file | onnxruntime M instructions / run | teachcam / onnxruntime |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cpu']} | {r['backbone']} | {r['teachcam_insns_per_image'] / 1e6:.1f} | "
              f"{r['onnxruntime_best'].split('_')[-1].removesuffix('.onnx')} | "
              f"{r['onnxruntime_insns_per_run'][r['onnxruntime_best']] / 1e6:.1f} | "
              f"{r['ratio']:.2f} |")
    print()
    print("| qemu -cpu | backbone | teachcam's classify output, emulated vs here | "
          "onnxruntime file | its output, emulated vs here |")
    print("|---|---|---|---|---|")
    for r in rows:
        for f, d in r["onnxruntime_output_vs_native"].items():
            same = ("identical" if d["identical"] else
                    f"{d['differing']} of {d['of']} values differ, max {d['max_abs_diff']:.3g}, "
                    f"cosine {d['cosine']:.6f}")
            print(f"| {r['cpu']} | {r['backbone']} | "
                  f"{'identical' if r['teachcam_same_output_as_native'] else 'DIFFERENT'} | "
                  f"{f} | {same} |")
    for r in rows:
        print(f"{r['cpu']} {r['backbone']}: teachcam says: {r['teachcam_kernel_line']}")
    if a.json_out:
        a.json_out.write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
