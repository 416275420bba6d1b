#!/usr/bin/env python3
"""Smoke test of a cross-built teachcam: the board binary (run under qemu-user) and the host
binary embed and classify the same images with the shipped model and the same head. Passes when
every embedding's cosine to the host's is >= the bound for its precision (MIN_COSINE: int8,
the default, and w8) and every top class agrees.

Images: generated scenes and the committed test cards, plus real photos from ../shared/data
(hymenoptera val) when that folder is present. The head is trained on the host from generated
scenes. Usage: smoke.py --host HOST_BIN --board "qemu-aarch64 -L SYSROOT BOARD_BIN" --arch aarch64
"""
import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Per precision. w8 computes in float on both sides: only float rounding differs. int8 runs
# identical integer kernels (pinned bit for bit by the unit tests on every architecture), but
# its float stem is computed by each architecture's float kernels, and a last-bit difference
# there can move a value of the first quantised tensor across a rounding boundary.
MIN_COSINE = {"int8": 0.995, "w8": 0.999}


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(cmd[:6])} ... exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--board", required=True, help="command prefix running the board binary")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    a = ap.parse_args()
    host = [str(Path(a.host).resolve())]
    board = shlex.split(a.board)
    models = ["--models", str(ROOT / "models")]
    with tempfile.TemporaryDirectory() as w:
        w = Path(w)
        run(host + ["synth", str(w / "scenes"), "--train", "6", "--val", "2", "--seed", "11"])
        head = w / "smoke.head"
        run(host + models + ["train", str(w / "scenes" / "train"), "--out", str(head), "--seed", "1"])
        imgs = w / "imgs"
        for p in sorted((w / "scenes" / "val").glob("*/000.jpg")):
            dst = imgs / p.parent.name
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst / p.name)
        (imgs / "cards").mkdir()
        for p in sorted((ROOT / "tests" / "fixtures" / "golden").glob("*.png")):
            shutil.copy(p, imgs / "cards" / p.name)
        real = sorted((Path(a.data) / "hymenoptera" / "val").glob("*/*.jpg"))[:1] + \
            sorted((Path(a.data) / "hymenoptera" / "val").glob("*/*.jpg"))[-1:]
        if real:
            (imgs / "photos").mkdir()
            for p in real:
                shutil.copy(p, imgs / "photos" / p.name)
        kinds = "generated scenes, test cards" + (f", {len(real)} real photos" if real else
                                                  " (no ../shared/data: no real photos)")
        files = sorted(str(p) for p in imgs.glob("*/*") if p.is_file())
        ok = True
        for precision, min_cos in MIN_COSINE.items():
            prec = ["--precision", precision]
            head = w / f"smoke-{precision}.head"
            run(host + models + prec + ["train", str(w / "scenes" / "train"), "--out", str(head),
                                        "--seed", "1"])
            results = {}
            for name, cmd in [("host", host), ("board", board)]:
                t = time.time()
                out = run(cmd + models + prec + ["classify", "--head", str(head), "--json", "--embedding"]
                          + files)
                results[name] = [json.loads(l) for l in out.splitlines() if l.strip()]
                print(f"  {name} {precision}: {len(results[name])} images in {time.time() - t:.1f} s "
                      "(whole process)")
            hc, bc = results["host"], results["board"]
            assert [x["path"] for x in hc] == [x["path"] for x in bc], "same images in the same order"
            he = [x["embedding"] for x in hc]
            be = [x["embedding"] for x in bc]
            cos = [cosine(x, y) for x, y in zip(he, be)]
            agree = sum(1 for x, y in zip(hc, bc) if x["top"][0]["class"] == y["top"][0]["class"])
            worst = min(cos)
            print(f"smoke {a.arch} {precision}: {len(cos)} images ({kinds}); cosine to host: "
                  f"min {worst:.7f}, mean {sum(cos) / len(cos):.7f}; top class agrees on {agree}/{len(hc)}")
            if not (worst >= min_cos and agree == len(hc) == len(bc)):
                ok = False
                for p, c in zip(files, cos):
                    if c < min_cos:
                        print(f"  {p}: cosine {c:.6f}")
                print(f"FAIL {precision}: need cosine >= {min_cos} and every class to agree")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
