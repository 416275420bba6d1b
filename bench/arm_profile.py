#!/usr/bin/env python3
"""Where the ARM proxy's guest instructions go: per function symbol, per image, for one CPU
model and precision (the companion of bench/arm_bench.py, same method: runs over 1 and over 6
generated scenes, difference / 5).

Needs a board binary WITH its symbol table (`make profile-arm` builds one in
target/profile-arm, the release profile with CARGO_PROFILE_RELEASE_STRIP=none) and the iprof
plugin (cross/qemu-icount/iprof.c). Inlined code is counted for the function it was inlined
into; tract-linalg's assembly kernels have no symbols and show as "?".

Usage: arm_profile.py --host HOST_BIN --board BOARD_BIN --plugin libiprof.so
                      [--cpu cortex-a76] [--precision int8] [--kernels SPEC] [--top 20]
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arm_bench import CONFIGS, QEMU, SMALL, LARGE, run  # noqa: E402


def profile(qemu, sysroot, cpu, env, plugin, board, args, out):
    run([qemu, "-L", sysroot, "-cpu", cpu, "-plugin", f"{plugin},out={out}", board] + args, env)
    by = collections.Counter()
    for line in Path(out).read_text().splitlines():
        execs, insns, _addr, sym = line.split(" ", 3)
        by[sym] += int(execs) * int(insns)
    return by


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--board", required=True, help="aarch64 board binary with symbols")
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--models", default=str(Path(__file__).resolve().parent.parent / "models"))
    ap.add_argument("--cpu", default="cortex-a76", choices=["cortex-a72", "cortex-a76"])
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--kernels", default="", help="TEACHCAM_KERNELS for the board runs")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    arch, cpu, tract_env, what = next(c for c in CONFIGS if c[0] == "aarch64" and c[1] == a.cpu)
    qemu, sysroot = QEMU[arch]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACT_", "QEMU_", "TEACHCAM_"))}
    env.update(tract_env)
    if a.kernels:
        env["TEACHCAM_KERNELS"] = a.kernels
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        run([a.host, "synth", str(w / "scenes"), "--train", "6", "--val", "2", "--seed", "11"])
        images = sorted(str(p) for p in (w / "scenes" / "val").glob("*/*.jpg"))[:LARGE]
        head = w / "p.head"
        run([a.host, "--models", a.models, "--precision", a.precision, "train",
             str(w / "scenes" / "train"), "--out", str(head), "--seed", "1"])
        counts = {}
        for n in (SMALL, LARGE):
            args = ["--models", a.models, "--precision", a.precision, "classify", "--head",
                    str(head), "--json"] + images[:n]
            counts[n] = profile(qemu, sysroot, cpu, env, a.plugin, a.board, args, w / f"p{n}")
    per = {s: (counts[LARGE][s] - counts[SMALL][s]) / (LARGE - SMALL)
           for s in set(counts[LARGE]) | set(counts[SMALL])}
    total = sum(per.values())
    names = sorted(per, key=lambda s: -per[s])[:a.top]
    shown = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                           text=True).stdout.splitlines() or names
    print(f"{a.cpu} ({what}), {a.precision}"
          f"{', TEACHCAM_KERNELS=' + a.kernels if a.kernels else ''}: "
          f"{total / 1e6:.1f} M guest instructions per image (a proxy, not a board time)")
    for s, name in zip(names, shown):
        # Rust's legacy mangling leaves a hash suffix; drop it.
        name = name.rsplit("::h", 1)[0] if "::h" in name else name
        print(f"{per[s] / 1e6:9.2f} M {100 * per[s] / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
