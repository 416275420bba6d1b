#!/usr/bin/env python3
"""The ARM speed proxy: guest instructions per image that qemu-user executes for the board
binaries, counted by the TCG plugin in cross/qemu-icount. NOT a board time: qemu executes the
same instructions as a board would, but says nothing about how many cycles each takes.

For every CPU model below and every precision, `teachcam classify` runs under qemu once over 1
image and once over 6 images (generated scenes, 256x192 JPEG); instructions per image =
(count over 6 - count over 1) / 5, so loading the model and the head cancels. Per image
therefore means JPEG decode + preprocessing + backbone + head, of which the backbone is nearly
all. Heads are trained by the host binary with the same precision (a head names its backbone,
which is the same file on every architecture).

It then prints multiply-adds per instruction (the network's multiply-adds from the host's
`teachcam bench --profile` cost column, f32), each precision's ratio to f32 on the same CPU
model, and a paper estimate of board milliseconds from assumed clocks and instructions per
cycle, next to published figures for other runtimes. Runs one qemu at a time (they are
CPU-bound; the machine has 2 cores).

With --kernels, the int8 rows are repeated with kernels forced by TEACHCAM_KERNELS (one row per
spec, e.g. `pointwise=neon;pointwise=tract:arm64simd_mmm_i32_8x8`): the measurement that picks
each layer type's kernel per CPU. A spec a CPU model cannot run is skipped for it.

With --backbone, every run uses that network (default: the binary's default backbone).

Usage: arm_bench.py --host HOST_BIN --plugin libicount.so [--dist dist] [--json-out F]
                    [--only aarch64-cortex-a72,...] [--precisions int8,f32] [--kernels S1;S2]
                    [--backbone mobilenetv2|efficientnet-lite2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (arch, qemu -cpu, tract's CPU environment, what it stands for). tract picks its aarch64
# kernels from a CPU "kind" and from HWCAP; qemu-user 7.2 shows the guest the host's
# /proc/cpuinfo, so the kind is set as the board would get it from its part number. Kind a72
# (Pi 4) does not imply dot product, and qemu's cortex-a72 has none (SDOT would be an illegal
# instruction there), so tract takes its SMLAL path; kind a55/a75 would force SDOT. A Pi 5's
# part (A76, 0xd0b) is unknown to tract: kind Generic, dot product from HWCAP.
CONFIGS = [
    ("aarch64", "cortex-a72", {"TRACT_CPU_AARCH64_KIND": "a72"},
     "Pi 4 (A72), Jetson Nano (A57) class: NEON, no dot product"),
    ("aarch64", "cortex-a76", {"TRACT_CPU_AARCH64_KIND": "generic"},
     "Pi 5 (A76): NEON and dot product"),
    ("armv7", "cortex-a7", {"TRACT_CPU_ARM32_NEON": "true"},
     "Pi 2 / 32-bit Pi OS (A7): NEON"),
]
QEMU = {"aarch64": ("qemu-aarch64", "/usr/aarch64-linux-gnu"),
        "armv7": ("qemu-arm", "/usr/arm-linux-gnueabihf")}
PRECISIONS = ["int8", "f32", "w8", "qdq", "qop"]
# The goal for the int8 kernels: the int8 default's instructions per image at most this times f32's.
INT8_GOAL = {"aarch64-cortex-a72": 0.8, "aarch64-cortex-a76": 0.5, "armv7-cortex-a7": 0.8}
SMALL, LARGE = 1, 6
# Published multiply-adds at 224 when the profile has no cost column.
FALLBACK_MACS = {None: 300e6, "mobilenetv2": 300e6, "efficientnet-lite2": 575e6}

# Paper estimate, one thread: ms = instructions / (IPC x clock). Assumed, not measured: IPC
# ranges for NEON-heavy inference code on these cores (A72/A57 3-wide out of order, A76 4-wide
# out of order, A7 in order with partial dual issue and 64-bit NEON datapath).
BOARDS = {
    "aarch64-cortex-a72": [("Raspberry Pi 4, A72 at 1.5 GHz", 1.5, (0.8, 1.6)),
                           ("Raspberry Pi 4 (newer) / 400, A72 at 1.8 GHz", 1.8, (0.8, 1.6)),
                           ("Jetson Nano, A57 at 1.43 GHz", 1.43, (0.7, 1.4))],
    "aarch64-cortex-a76": [("Raspberry Pi 5, A76 at 2.4 GHz", 2.4, (1.2, 2.5))],
    "armv7-cortex-a7": [("Raspberry Pi 2, A7 at 0.9 GHz", 0.9, (0.5, 1.0))],
}
# Published MobileNetV2 1.0/224 latencies of other runtimes (public figures):
# (config, precision ours to compare, board label, clock GHz, threads, ms, source). The Jetson
# Nano's A57 is compared with the A72 count: same kernels in tract (kind generic, no dot product).
ANCHORS = [
    ("aarch64-cortex-a72", "int8", "Raspberry Pi 4", 1.5, 4, 17.0, "TFLite + XNNPACK int8"),
    ("aarch64-cortex-a72", "f32", "Raspberry Pi 4", 1.5, 4, 46.0, "TFLite + XNNPACK fp32"),
    ("aarch64-cortex-a76", "f32", "Raspberry Pi 5", 2.4, 1, 16.4, "ncnn fp32"),
    ("aarch64-cortex-a76", "f32", "Raspberry Pi 5", 2.4, 4, 10.5, "ncnn fp32"),
    ("aarch64-cortex-a72", "f32", "Jetson Nano", 1.43, 1, 94.0, "ncnn fp32"),
]


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(map(str, cmd[:8]))} ... exited {p.returncode}:\n"
                         f"{p.stderr.strip()[-2000:]}")
    return p.stdout


def count(arch, cpu, tract_env, plugin, board_bin, args, out_file, extra_env=None):
    """Guest instructions of one whole board-binary run under qemu, its wall time, its stdout."""
    qemu, sysroot = QEMU[arch]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACT_", "QEMU_", "TEACHCAM_"))}  # only what this run sets
    env.update(tract_env)
    env.update(extra_env or {})
    t = time.time()
    stdout = run([qemu, "-L", sysroot, "-cpu", cpu, "-plugin", f"{plugin},out={out_file}",
                  board_bin] + args, env)
    wall = time.time() - t
    fields = dict(line.split() for line in Path(out_file).read_text().splitlines())
    if fields.get("vcpus") != "1":
        raise SystemExit(f"FAIL: {fields.get('vcpus')} guest threads: the plugin's count is "
                         "exact only for one")
    return int(fields["insns"]), wall, stdout


def network_macs(host, models, backbone_args, backbone):
    """Multiply-adds of one f32 inference: the sum of tract's FMA costs over the profile."""
    fallback = FALLBACK_MACS[backbone]
    try:
        out = run([host, "--models", models, *backbone_args, "--precision", "f32", "bench",
                   "--runs", "1", "--warmup", "0", "--profile", "--json"])
        prof = json.loads(out)["profile"]
        macs = sum(p["mmacs"] for p in prof) * 1e6
        if 0.8 * fallback <= macs <= 1.2 * fallback:
            return macs, "tract's FMA cost column of `teachcam bench --profile` (f32)"
        reason = f"the profile's cost column sums to {macs / 1e6:.0f} M"
    except (SystemExit, KeyError, ValueError) as e:
        reason = f"no cost column ({e})"
    return fallback, f"{fallback / 1e6:.0f} M, the published figure ({reason})"


def estimates(rows):
    """Paper estimate of one-thread board ms per row and board: a range from the IPC range."""
    out = []
    for r in rows:
        for board, ghz, (ipc_lo, ipc_hi) in BOARDS.get(r["config"], []):
            out.append({"config": r["config"], "precision": r["precision"], "board": board,
                        "clock_ghz": ghz, "ipc_range": [ipc_lo, ipc_hi],
                        "estimate_ms_1_thread": [r["insns_per_image"] / (ipc_hi * ghz * 1e6),
                                                 r["insns_per_image"] / (ipc_lo * ghz * 1e6)]})
    return out


def anchors(rows):
    """Per published figure, the IPC per core our instruction count would need to match it."""
    out = []
    by = {(r["config"], r["precision"]): r for r in rows}
    for config, prec, board, ghz, threads, ms, source in ANCHORS:
        r = by.get((config, prec))
        if r is None:
            continue
        # IPC per core teachcam would need to take that long (ideal scaling over threads).
        need = r["insns_per_image"] / (threads * ms * 1e-3 * ghz * 1e9)
        out.append({"config": config, "precision": prec, "board": board, "source": source,
                    "threads": threads, "published_ms": ms, "clock_ghz": ghz,
                    "ipc_needed_to_match": need})
    return out


def print_tables(rows, est, anc, macs, macs_source):
    print("\nARM PROXY (guest instructions under qemu-user, not a board time)")
    print(f"multiply-adds per image: {macs / 1e6:.1f} M ({macs_source})\n")
    width = max(9, *(len(r["precision"]) for r in rows))
    print(f"{'arch':8} {'qemu cpu':11} {'precision':{width}} {'instr/image':>12} "
          f"{'MACs/instr':>10} {'vs f32':>7}")
    for r in rows:
        print(f"{r['arch']:8} {r['cpu']:11} {r['precision']:{width}} "
              f"{r['insns_per_image'] / 1e6:10.1f} M {r['macs_per_insn']:10.2f} "
              f"{r['ratio_to_f32']:6.2f}x")
    for r in rows:
        if r["precision"] == "int8" and r["config"] in INT8_GOAL:
            goal = INT8_GOAL[r["config"]]
            print(f"int8 / f32 on {r['config']}: {r['ratio_to_f32']:.2f}x (goal "
                  f"<= {goal}x: {'met' if r['ratio_to_f32'] <= goal else 'not met'})")
    print("\nPAPER ESTIMATE of one-thread board ms = instructions / (assumed IPC x clock); "
          "an estimate, not a measurement")
    for e in est:
        lo, hi = e["estimate_ms_1_thread"]
        print(f"  {e['board']:48} {e['precision']:5} IPC {e['ipc_range'][0]}-{e['ipc_range'][1]}:"
              f" {lo:6.0f} - {hi:4.0f} ms")
    print("\nPUBLISHED figures of other runtimes, and the IPC per core teachcam's instruction "
          "count would need to match them (ideal thread scaling)")
    for a in anc:
        print(f"  {a['board']:15} {a['source']:22} {a['threads']} thread(s) "
              f"{a['published_ms']:5.1f} ms  vs ours {a['precision']:4} -> IPC "
              f"{a['ipc_needed_to_match']:.2f} at {a['clock_ghz']} GHz")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True, help="host teachcam (synth, train, profile)")
    ap.add_argument("--plugin", required=True, help="the icount TCG plugin (.so)")
    ap.add_argument("--dist", default=str(ROOT / "dist"), help="holds teachcam-aarch64/-armv7")
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--only", help="comma-separated configs, e.g. aarch64-cortex-a72")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--kernels", default="", help="';'-separated TEACHCAM_KERNELS specs for "
                    "extra int8 rows")
    ap.add_argument("--backbone", help="mobilenetv2 or efficientnet-lite2 (default: the "
                    "binary's default)")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    bb = ["--backbone", a.backbone] if a.backbone else []
    host, plugin = str(Path(a.host).resolve()), str(Path(a.plugin).resolve())
    precisions = a.precisions.split(",")
    if "f32" not in precisions:
        raise SystemExit("--precisions must include f32 (the ratios are to f32)")
    configs = [c for c in CONFIGS
               if not a.only or f"{c[0]}-{c[1]}" in a.only.split(",")]
    qemu_version = run(["qemu-aarch64", "--version"]).splitlines()[0]
    started = time.time()
    with tempfile.TemporaryDirectory() as w:
        w = Path(w)
        run([host, "synth", str(w / "scenes"), "--train", "6", "--val", "2", "--seed", "11"])
        images = sorted(str(p) for p in (w / "scenes" / "val").glob("*/*.jpg"))[:LARGE]
        assert len(images) == LARGE, "synth wrote 2 val images of each of 3 kinds"
        heads = {}
        for p in precisions:
            heads[p] = w / f"{p}.head"
            run([host, "--models", a.models, *bb, "--precision", p, "train",
                 str(w / "scenes" / "train"), "--out", str(heads[p]), "--seed", "1"])
        macs, macs_source = network_macs(host, a.models, bb, a.backbone)
        rows = []
        variants = [(p, p, {}) for p in precisions]
        variants += [(f"int8[{spec}]", "int8", {"TEACHCAM_KERNELS": spec})
                     for spec in a.kernels.split(";") if spec.strip()]
        if a.kernels and "int8" not in heads:
            heads["int8"] = w / "int8.head"
            run([host, "--models", a.models, *bb, "--precision", "int8", "train",
                 str(w / "scenes" / "train"), "--out", str(heads["int8"]), "--seed", "1"])
        total = len(configs) * len(variants) * 2
        k = 0
        for arch, cpu, tract_env, what in configs:
            board_bin = str(Path(a.dist) / f"teachcam-{arch}")
            if not os.access(board_bin, os.X_OK):
                raise SystemExit(f"no {board_bin}: run 'make cross' first")
            for label, p, extra in variants:
                counts = {}
                for n in (SMALL, LARGE):
                    k += 1
                    args = ["--models", a.models, *bb, "--precision", p, "classify",
                            "--head", str(heads[p]), "--json"] + images[:n]
                    try:
                        insns, wall, out = count(arch, cpu, tract_env, plugin, board_bin, args,
                                                 w / "icount.txt", extra)
                    except SystemExit as e:
                        if extra and "cannot run" in str(e):
                            print(f"[{k}/{total}] {arch} -cpu {cpu} {label}: not runnable here",
                                  flush=True)
                            break
                        raise
                    if len([ln for ln in out.splitlines() if ln.strip()]) != n:
                        raise SystemExit(f"FAIL: classify printed no line per image:\n{out}")
                    counts[n] = (insns, wall)
                    print(f"[{k}/{total}] {arch} -cpu {cpu} {label} {n} image(s): "
                          f"{insns / 1e6:.1f} M instructions, {wall:.1f} s", flush=True)
                if len(counts) < 2:
                    continue
                per_image = (counts[LARGE][0] - counts[SMALL][0]) / (LARGE - SMALL)
                rows.append({"config": f"{arch}-{cpu}", "arch": arch, "cpu": cpu,
                             "stands_for": what, "tract_env": tract_env, "precision": label,
                             "insns_1_image": counts[SMALL][0],
                             "insns_6_images": counts[LARGE][0],
                             "insns_per_image": per_image, "macs_per_insn": macs / per_image,
                             "qemu_wall_s": counts[SMALL][1] + counts[LARGE][1]})
    f32 = {r["config"]: r["insns_per_image"] for r in rows if r["precision"] == "f32"}
    for r in rows:
        r["ratio_to_f32"] = r["insns_per_image"] / f32[r["config"]]
    est, anc = estimates(rows), anchors(rows)
    print_tables(rows, est, anc, macs, macs_source)
    elapsed = time.time() - started
    print(f"\nmake bench-arm: {elapsed / 60:.1f} min for {total} qemu runs")
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps({
            "what": "guest instructions per image under qemu-user (a proxy, not a board time)",
            "backbone": a.backbone,
            "qemu": qemu_version, "method": f"(count over {LARGE} images - count over {SMALL})"
            f" / {LARGE - SMALL}, teachcam classify, generated 256x192 JPEG scenes",
            "macs_per_image": macs, "macs_source": macs_source, "rows": rows,
            "int8_goal_vs_f32": INT8_GOAL, "paper_estimates": est, "published_anchors": anc,
            "elapsed_s": elapsed}, indent=1))
        print(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
