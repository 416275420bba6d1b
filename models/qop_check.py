"""Does a QOperator model fit teachcam's int8 path? (owns the Python mirror of its acceptance rules)

A transcription of what ``src/qnn/rewrite.rs`` (``rewrite_nodes``, ``find_stems``) and the
operators behind it (``src/qnn/ops.rs``: QLinearConv must be 1x1 stride-1 unpadded with
symmetric weights, or depthwise; ``src/qnn/stem.rs``: the fused stem's depthwise has at
most 16 taps and padding smaller than its kernel) accept, so that ``export.py`` fails a
build whose int8 file the appliance would refuse or run without its own kernels. The Rust
code is the authority; keep the two in step.

    python models/qop_check.py models/*_qop.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import numpy_helper

STEM_MAX_TAPS = 16


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _float_conv(node: onnx.NodeProto) -> dict | None:
    """The Conv's attributes when it is a plain 2-D float conv with a bias (rewrite.rs float_conv)."""
    if node.op_type != "Conv" or len(node.input) != 3 or len(node.output) != 1:
        return None
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b""):
        return None
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return None
    k, s, p = a.get("kernel_shape"), a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0])
    if k is None or len(k) != 2 or len(s) != 2 or len(p) != 4 or min(list(k) + list(s)) <= 0 or min(p) < 0:
        return None
    return {"kernel": list(k), "strides": list(s), "pads": list(p), "group": a.get("group", 1)}


def check(model: onnx.ModelProto) -> dict:
    """Counts as Rust's ``Rewritten`` reports them, the fused stems, the depthwise shapes, and
    every reason teachcam's rewrite would refuse the graph (``problems``, empty when accepted)."""
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for x in n.input:
            consumers.setdefault(x, []).append(i)
        for o in n.output:
            producer[o] = i
    outputs = {o.name for o in g.output}
    problems: list[str] = []

    # --- find_stems: QuantizeLinear <- Clip <- depthwise Conv <- Clip <- Conv, nothing else reading
    def sole(name: str, reader: int) -> int | None:
        return producer.get(name) if consumers.get(name) == [reader] and name not in outputs else None

    stems, absorbed = {}, set()
    for qi, q in enumerate(g.node):
        if q.op_type != "QuantizeLinear" or len(q.input) != 3:
            continue
        readers = consumers.get(q.output[0], [])
        if not readers or any(g.node[i].op_type != "QLinearConv" for i in readers):
            continue
        c2 = sole(q.input[0], qi)
        if c2 is None or g.node[c2].op_type != "Clip" or len(g.node[c2].input) != 3:
            continue
        d = sole(g.node[c2].input[0], c2)
        dw = _float_conv(g.node[d]) if d is not None else None
        if dw is None:
            continue
        c1 = sole(g.node[d].input[0], d)
        if c1 is None or g.node[c1].op_type != "Clip" or len(g.node[c1].input) != 3:
            continue
        cv = sole(g.node[c1].input[0], c1)
        conv = _float_conv(g.node[cv]) if cv is not None else None
        if conv is None or conv["group"] != 1 or dw["group"] <= 1:
            continue
        taps = dw["kernel"][0] * dw["kernel"][1]
        if taps > STEM_MAX_TAPS:
            problems.append(f"stem depthwise {g.node[d].name}: {taps} taps (at most {STEM_MAX_TAPS})")
        if dw["pads"][0] >= dw["kernel"][0] or dw["pads"][2] >= dw["kernel"][0]:
            problems.append(f"stem depthwise {g.node[d].name}: padding as large as its kernel")
        stems[qi] = {"conv": g.node[cv].name, "conv_kernel": conv["kernel"], "conv_strides": conv["strides"],
                     "conv_pads": conv["pads"], "dw": g.node[d].name, "dw_kernel": dw["kernel"],
                     "dw_strides": dw["strides"], "dw_pads": dw["pads"], "output": q.output[0]}
        absorbed.update((cv, c1, d, c2))

    # --- rewrite_nodes: walk the graph in order
    nhwc: set[str] = set()
    fnhwc: set[str] = set()
    dq: dict[str, onnx.NodeProto] = {}
    counts = {"quantize": 0, "conv": 0, "add": 0, "mean": 0, "stem": 0}
    kinds = {"pointwise": 0, "depthwise": 0}
    dw_shapes: dict[str, int] = {}
    for i, n in enumerate(g.node):
        if i in absorbed:
            continue
        if i in stems:
            nhwc.add(n.output[0])
            counts["stem"] += 1
            counts["quantize"] += 1
            continue
        name = n.name or (n.output[0] if n.output else "")

        def ours(x: str) -> bool:
            return x in nhwc or x in fnhwc or x in dq

        op = n.op_type
        if op == "QLinearConv":
            if n.input[0] not in nhwc:
                problems.append(f"{name}: input {n.input[0]} is not quantised by a rewritten node")
            nhwc.add(n.output[0])
            counts["conv"] += 1
            a = _attrs(n)
            w = inits.get(n.input[3])
            wz = inits.get(n.input[5])
            if w is None or wz is None or w.dtype != np.int8 or w.ndim != 4:
                problems.append(f"{name}: weights must be a constant i8 [out, in/group, kh, kw]")
                continue
            k = tuple(a.get("kernel_shape", w.shape[2:]))
            s = tuple(a.get("strides", [1, 1]))
            p = tuple(a.get("pads", [0, 0, 0, 0]))
            group = a.get("group", 1)
            if k == (1, 1) and s == (1, 1) and p == (0, 0, 0, 0) and group == 1:
                kinds["pointwise"] += 1
                if np.any(wz != 0):
                    problems.append(f"{name}: 1x1 weights must be symmetric (zero point 0)")
            elif group == w.shape[0] and w.shape[1] == 1 and group > 1:
                kinds["depthwise"] += 1
                key = f"k{k[0]}x{k[1]} s{s[0]} pads{list(p)}"
                dw_shapes[key] = dw_shapes.get(key, 0) + 1
                if p[0] >= k[0] or p[2] >= k[0] or p[1] >= k[1] or p[3] >= k[1]:
                    problems.append(f"{name}: depthwise padding as large as the kernel")
            else:
                problems.append(f"{name}: QLinearConv k{k} s{s} group {group}: only 1x1 and depthwise "
                                "quantised convolutions have teachcam kernels")
        elif op == "QuantizeLinear" and n.input[0] in fnhwc:
            nhwc.add(n.output[0])
        elif op == "QuantizeLinear" and not ours(n.input[0]) and all(
                g.node[r].op_type == "QLinearConv" for r in consumers.get(n.output[0], [])):
            nhwc.add(n.output[0])
            counts["quantize"] += 1
        elif op == "DequantizeLinear" and n.input[0] in nhwc:
            if len(n.input) != 3:
                problems.append(f"{name}: DequantizeLinear needs a zero point")
            dq[n.output[0]] = n
        elif op == "Add" and len(n.input) == 2 and all(x in dq or x in fnhwc for x in n.input):
            if n.output[0] in outputs:
                problems.append(f"{name}: an int8-section Add is a graph output")
            fnhwc.add(n.output[0])
            counts["add"] += 1
        elif op == "GlobalAveragePool" and n.input[0] in dq:
            counts["mean"] += 1
        else:
            bad = [x for x in n.input if ours(x)]
            if bad:
                problems.append(f"{name} ({op}) reads {bad[0]}, which teachcam's int8 ops keep in NHWC")
    for o in outputs:
        if o in nhwc or o in fnhwc or o in dq:
            problems.append(f"graph output {o} is an int8 NHWC tensor")
    nonstd = sorted({n.op_type for n in g.node if n.domain not in ("", "ai.onnx")})
    if nonstd:
        problems.append(f"non-standard ops {nonstd}")
    return {"counts": counts, "kinds": kinds, "stems": list(stems.values()),
            "depthwise_shapes": dict(sorted(dw_shapes.items())), "problems": problems}


def main(paths: list[str]) -> int:
    bad = 0
    for p in paths:
        r = check(onnx.load(p))
        print(f"{p}: rewrite counts {r['counts']}, {r['kinds']}, depthwise {r['depthwise_shapes']}")
        for s in r["stems"]:
            print(f"  stem fused: {s['conv']} k{s['conv_kernel']} s{s['conv_strides']} pads {s['conv_pads']}"
                  f" + {s['dw']} k{s['dw_kernel']} s{s['dw_strides']} pads {s['dw_pads']} -> {s['output']}")
        for s in r["problems"]:
            print(f"  REFUSED: {s}")
        bad += bool(r["problems"]) or r["counts"]["stem"] != 1
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
