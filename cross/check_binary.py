#!/usr/bin/env python3
"""Checks a cross-built teachcam binary before it ships:

  glibc    the highest GLIBC_x.y symbol version it needs (`objdump -T`, from the board's
           binutils) must not exceed --max-glibc;
  kernels  tract-linalg's build script compiled its ARM assembly kernels (the aarch64 SDOT int8
           kernel and NEON f32 kernels, or armv7 NEON), and their instructions are in the binary's
           code (`objdump -d`): SDOT (aarch64) or NEON f32 multiply-accumulate (armv7). Rust code
           for these targets is compiled without dotprod (aarch64) and without NEON (armv7), so such
           instructions can only come from the kernels;
  size     stripped size in bytes.
Exit status 1 on any failure. Usage: check_binary.py --arch aarch64 --max-glibc 2.27 --build-dir D BIN
"""
import argparse
import glob
import re
import subprocess
import sys
from pathlib import Path


OBJDUMP = {"aarch64": "aarch64-linux-gnu-objdump", "armv7": "arm-linux-gnueabihf-objdump"}


def objdump(arch, flag, path):
    return subprocess.run([OBJDUMP[arch], flag, path], check=True, capture_output=True,
                          text=True).stdout


def glibc_versions(arch, path):
    out = objdump(arch, "-T", path)
    vs = {tuple(int(x) for x in m.split(".")) for m in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", out)}
    return sorted(vs)


# Kernel instructions: SDOT (aarch64 int8 dot product); NEON f32 multiply-accumulate on
# q registers (armv7).
KERNEL_INSN = {"aarch64": (re.compile(r"\tsdot\t"), "SDOT (int8 dot-product)"),
               "armv7": (re.compile(r"\tv(?:mla|fma)\.f32\tq"), "NEON f32 multiply-accumulate (q registers)")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--arch", choices=["aarch64", "armv7"], required=True)
    ap.add_argument("--max-glibc", default="2.27")
    ap.add_argument("--build-dir", required=True)
    a = ap.parse_args()
    ok = True
    data = Path(a.binary).read_bytes()
    print(f"{a.binary}: {len(data)} bytes")

    vs = glibc_versions(a.arch, a.binary)
    top = ".".join(map(str, vs[-1])) if vs else "none"
    limit = tuple(int(x) for x in a.max_glibc.split("."))
    if vs and vs[-1] > limit:
        print(f"FAIL glibc: needs GLIBC_{top}, above {a.max_glibc}")
        ok = False
    else:
        print(f"ok   glibc: highest symbol version GLIBC_{top} (limit {a.max_glibc})")

    outputs = glob.glob(f"{a.build_dir}/tract-linalg-*/output")
    lines = "".join(Path(p).read_text() for p in outputs)
    want = {"aarch64": ["static=arm64simd", "static=arm64simd_dot", "rustc-cfg=tract_arm64_dotprod"],
            "armv7": ["static=armvfpv2", "static=armv7neon"]}[a.arch]
    missing = [w for w in want if w not in lines]
    if missing or not outputs:
        print(f"FAIL kernels: tract-linalg's build did not produce {missing or want}")
        ok = False
    else:
        print(f"ok   kernels: tract-linalg built {', '.join(w.split('=')[1] for w in want)}")

    pattern, what = KERNEL_INSN[a.arch]
    n = len(pattern.findall(objdump(a.arch, "-d", a.binary)))
    if n == 0:
        print(f"FAIL kernels: no {what} instructions in the code")
        ok = False
    else:
        print(f"ok   kernels: {n} {what} instructions in the code")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
