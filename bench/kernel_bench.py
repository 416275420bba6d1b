#!/usr/bin/env python3
"""Which int8 kernel each layer type should run, measured on this machine.

    python3 bench/kernel_bench.py --teachcam target/release/teachcam [--rounds 3] [--runs 30]

For every layer type of the int8 path (1x1 convolutions, depthwise convolutions, the float
stem) and every kernel this CPU can run for it (``teachcam info --json``), runs
``teachcam bench --precision int8 --profile`` with that kernel forced (``TEACHCAM_KERNELS``),
kernels alternated round after round, and reports the median time of that layer type's
operators and of the whole backbone. Then the whole network: int8 (default kernels) against
tract's float path, alternated.

Each measurement is repeated for the CPU classes this machine can stand in for by hiding
features: as it is, and "AVX2 without VNNI" (``TEACHCAM_CPU_MASK=vnni``, and tract's own
AVX-512 kernels hidden with ``TRACT_CPU_ISA`` so its float path is the one such a CPU gets).
Wall time, one thread; compare within a run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

OPS = {"pointwise": "QnnPointwise", "depthwise": "QnnDepthwise", "stem": "QnnStem"}

CLASSES = {
    "native": {},
    "avx2-no-vnni": {
        "TEACHCAM_CPU_MASK": "vnni",
        "TRACT_CPU_ISA": "-avx512f,-avx512vnni,-avxvnni,-avx512fp16",
    },
}


def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    full = dict(os.environ, **env)
    out = subprocess.run(cmd, env=full, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def bench(binary: str, precision: str, runs: int, env: dict[str, str]) -> dict:
    return run_json(
        [binary, "bench", "--precision", precision, "--profile", "--json", "--runs", str(runs)],
        env,
    )


def op_ms(result: dict, op: str) -> float:
    return sum(p["ms"] for p in result.get("profile", []) if p["op"] == op)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachcam", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--json-out")
    a = ap.parse_args()
    report: dict = {}
    for cls in a.classes.split(","):
        env = CLASSES[cls]
        info = run_json([a.teachcam, "info", "--json"], env)
        kernels = info["int8_kernels"]
        print(f"== CPU class {cls}: features {' '.join(kernels['cpu'])}")
        layers: dict = {}
        for layer, op in OPS.items():
            names = kernels[layer]["runnable"]
            times: dict[str, list[float]] = {n: [] for n in names}
            totals: dict[str, list[float]] = {n: [] for n in names}
            for _ in range(a.rounds):
                for name in names:
                    r = bench(a.teachcam, "int8", a.runs, dict(env, TEACHCAM_KERNELS=f"{layer}={name}"))
                    times[name].append(op_ms(r, op))
                    totals[name].append(r["backbone_ms_median"])
            default = kernels[layer]["kernel"]
            print(f"  {layer} ({op}); default {default}: {kernels[layer]['why']}")
            rows = []
            for name in names:
                m, t = statistics.median(times[name]), statistics.median(totals[name])
                rows.append({"kernel": name, "layer_ms": m, "backbone_ms": t})
                mark = "*" if name == default else " "
                print(f"   {mark} {name:<34} {m:8.3f} ms   backbone {t:7.2f} ms")
            layers[layer] = {"default": default, "why": kernels[layer]["why"], "kernels": rows}
        whole: dict[str, list[float]] = {"int8": [], "f32": [], "w8": []}
        for _ in range(a.rounds):
            for p in whole:
                whole[p].append(bench(a.teachcam, p, a.runs, env)["backbone_ms_median"])
        med = {p: statistics.median(v) for p, v in whole.items()}
        print(
            f"  whole backbone: int8 {med['int8']:.2f} ms, f32 {med['f32']:.2f} ms, "
            f"w8 {med['w8']:.2f} ms: int8 is {med['f32'] / med['int8']:.2f}x tract f32"
        )
        report[cls] = {"features": kernels["cpu"], "layers": layers, "backbone_ms": med}
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
