#!/usr/bin/env python3
"""Reference outputs for teachcam's int8 kernels (src/qnn), computed by onnxruntime.

    python models/qnn_fixtures.py --out tests/fixtures/qnn/qnn_fixtures.json

Two kinds of case, all deterministic (seeded numpy, 1-thread onnxruntime, ORT_ENABLE_ALL as
in the benchmark):

* layer cases: one ``QLinearConv`` (1x1, or depthwise 3x3 with the strides and paddings
  MobileNetV2 uses, or depthwise 5x5 with EfficientNet-Lite2's: stride 1 pads [2,2,2,2],
  stride 2 TF-same pads [1,1,2,2], on even, odd and tiny inputs), or a
  ``DequantizeLinear``/``Add``/``QuantizeLinear`` chain where the second add reads the
  first one's float sum (as QOperator residual chains do), on seeded random data with zero
  points and scales chosen so that some outputs saturate. Tensors are stored flat in NHWC
  order, the layout teachcam's kernels use.
* body cases: a shipped QOperator model from its first ``QuantizeLinear`` to the pooled
  embedding, run on a formula input (so Rust can regenerate it bit for bit) at small sizes;
  recorded are the per-channel integer sums of the final ``u8`` tensor, which pin every
  integer result of the network. The ``models/mobilenetv2_qop.onnx`` cases carry no
  ``model`` field (cut at ``expanded_conv_depthwise_relu``, final tensor
  ``Conv_1_quantized``); the others name their ``model``, the ``cut`` tensor (the float
  input of the int8 section, [1,32,h,w]), the ``final_quantized`` tensor and the
  ``rewrite`` counts teachcam's rewrite reports on the cut graph.

The cases added for EfficientNet-Lite2 come from their own seeded generator, after the
original ones, so the original cases regenerate unchanged.

Used by ``make qnn-fixtures``; the output is committed and read by the unit tests in
``src/qnn/tests.rs`` on every architecture.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qop_check  # noqa: E402  (the Python mirror of teachcam's int8 rewrite rules)

ROOT = Path(__file__).resolve().parent.parent
CUT = "expanded_conv_depthwise_relu"  # float input of the int8 section in the shipped model
LITE2_MODEL = "efficientnet_lite2_qop.onnx"
LITE2_CUT = "b0_dw_relu"  # its float input of the int8 section (the first depthwise's ReLU6)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def nhwc(a: np.ndarray) -> list[int]:
    return [int(v) for v in a.transpose(0, 2, 3, 1).ravel()]


def conv_case(rng, name, c_in, c_out, h, w, kernel, stride, pads, x_zero, y_zero, depthwise):
    group = c_in if depthwise else 1
    x = rng.integers(0, 256, size=(1, c_in, h, w), dtype=np.uint8)
    wshape = (c_out, 1 if depthwise else c_in, kernel, kernel)
    wt = rng.integers(-127, 128, size=wshape, dtype=np.int8)
    x_scale = np.float32(rng.uniform(0.01, 0.05))
    w_scale = rng.uniform(0.002, 0.02, size=c_out).astype(np.float32)
    bias = rng.integers(-20000, 20000, size=c_out, dtype=np.int32)
    # Exact accumulators in numpy, to pick an output scale where ~5 % of outputs saturate.
    xc = x.astype(np.int64) - x_zero
    xp = np.pad(xc, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - kernel) // stride + 1
    ow = (w + pads[1] + pads[3] - kernel) // stride + 1
    acc = np.zeros((c_out, oh, ow), dtype=np.int64)
    for o in range(c_out):
        for ky in range(kernel):
            for kx in range(kernel):
                patch = xp[0, :, ky:ky + stride * oh:stride, kx:kx + stride * ow:stride]
                if depthwise:
                    acc[o] += patch[o] * int(wt[o, 0, ky, kx])
                else:
                    acc[o] += np.tensordot(wt[o, :, ky, kx].astype(np.int64), patch, axes=(0, 0))
        acc[o] += bias[o]
    real = acc * (x_scale * w_scale)[:, None, None]
    y_scale = np.float32(np.quantile(np.abs(real), 0.95) / 127.0 + 1e-6)
    inits = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
        numpy_helper.from_array(np.array(x_zero, np.uint8), "xz"),
        numpy_helper.from_array(wt, "w"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(np.zeros(c_out, np.int8), "wz"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
        numpy_helper.from_array(np.array(y_zero, np.uint8), "yz"),
        numpy_helper.from_array(bias, "b"),
    ]
    node = helper.make_node(
        "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
        kernel_shape=[kernel, kernel], strides=[stride, stride], pads=list(pads), group=group)
    graph = helper.make_graph(
        [node], name, [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    y = session(model).run(None, {"x": x})[0]
    return {
        "name": name, "kind": "depthwise" if depthwise else "pointwise",
        "c_in": c_in, "c_out": c_out, "h": h, "w": w, "kernel": kernel, "stride": stride,
        "pads": list(pads), "x_scale": float(x_scale), "x_zero": x_zero,
        "weights": [int(v) for v in wt.ravel()], "w_scale": [float(v) for v in w_scale],
        "bias": [int(v) for v in bias], "y_scale": float(y_scale), "y_zero": y_zero,
        "x": nhwc(x), "y": nhwc(y), "oh": int(y.shape[2]), "ow": int(y.shape[3]),
    }


def add_case(rng, n):
    """y1 = Q(DQ(a) + DQ(b)); y2 = Q((DQ(a) + DQ(b)) + DQ(c)): the float sum chains."""
    a, b, c = (rng.integers(0, 256, size=(1, n), dtype=np.uint8) for _ in range(3))
    p = {k: float(np.float32(rng.uniform(0.02, 0.2))) for k in ("sa", "sb", "sc", "s1", "s2")}
    z = {"za": int(rng.integers(0, 256)), "zb": int(rng.integers(0, 256)),
         "zc": int(rng.integers(0, 256)), "z1": 128, "z2": 100}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in p.items()]
    inits += [numpy_helper.from_array(np.array(v, np.uint8), k) for k, v in z.items()]
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
        helper.make_node("DequantizeLinear", ["c", "sc", "zc"], ["fc"]),
        helper.make_node("Add", ["fa", "fb"], ["sum1"]),
        helper.make_node("Add", ["sum1", "fc"], ["sum2"]),
        helper.make_node("QuantizeLinear", ["sum1", "s1", "z1"], ["y1"]),
        helper.make_node("QuantizeLinear", ["sum2", "s2", "z2"], ["y2"]),
    ]
    ins = [helper.make_tensor_value_info(k, TensorProto.UINT8, [1, n]) for k in "abc"]
    outs = [helper.make_tensor_value_info(k, TensorProto.UINT8, None) for k in ("y1", "y2")]
    model = helper.make_model(helper.make_graph(nodes, "add", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    y1, y2 = session(model).run(None, {"a": a, "b": b, "c": c})
    case = {"name": "add_chain", "kind": "add", "n": n}
    case.update({k: [int(v) for v in arr.ravel()] for k, arr in
                 (("a", a), ("b", b), ("c", c), ("y1", y1), ("y2", y2))})
    case.update(p)
    case.update(z)
    return case


def formula_input(h: int, w: int) -> np.ndarray:
    """The body cases' input; src/qnn/tests.rs computes the same values in f32."""
    i = np.arange(32 * h * w, dtype=np.int64)
    return (((i * 7919) % 1000).astype(np.float32) / np.float32(1000.0)
            * np.float32(6.0)).reshape(1, 32, h, w)


def body_case(h: int, w: int, model: str = "mobilenetv2_qop.onnx", cut: str = CUT,
              name: str | None = None) -> dict:
    m = onnx.load(str(ROOT / "models" / model))
    g = m.graph
    start = next(i for i, n in enumerate(g.node) if n.input and n.input[0] == cut)
    keep = list(g.node)[start:]
    del g.node[:]
    g.node.extend(keep)
    # The final u8 tensor: what the DequantizeLinear in front of GlobalAveragePool reads.
    producer = {o: n for n in g.node for o in n.output}
    pool = next(n for n in g.node if n.op_type == "GlobalAveragePool")
    dq = producer[pool.input[0]]
    assert dq.op_type == "DequantizeLinear", dq.op_type
    final, zero_name = dq.input[0], dq.input[2]
    first_q = g.node[0]
    assert first_q.op_type == "QuantizeLinear" and first_q.input[0] == cut, first_q
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(cut, TensorProto.FLOAT, [1, 32, h, w]))
    del g.value_info[:]
    # What teachcam's rewrite makes of the cut graph (its only output still the embedding).
    chk = qop_check.check(m)
    if chk["problems"]:
        raise SystemExit(f"{model} cut at {cut}: teachcam's rewrite would refuse it: {chk['problems']}")
    counts = {k: chk["counts"][k] for k in ("quantize", "conv", "add", "mean")}
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(final, TensorProto.UINT8, None))
    g.output.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None))
    q, emb = session(m).run(None, {cut: formula_input(h, w)})
    zero = next(numpy_helper.to_array(t) for t in g.initializer if t.name == zero_name)
    sums = q.astype(np.int64).sum(axis=(2, 3))[0] - int(zero) * q.shape[2] * q.shape[3]
    case = {"name": name or f"body_{h}x{w}", "kind": "body", "h": h, "w": w}
    if model != "mobilenetv2_qop.onnx":
        case.update({"model": model, "cut": cut, "final_quantized": final, "rewrite": counts})
    if np.count_nonzero(sums) <= 100:
        raise SystemExit(f"{case['name']}: only {np.count_nonzero(sums)} non-zero channel sums")
    case.update({"out_hw": [int(q.shape[2]), int(q.shape[3])],
                 "sums": [int(v) for v in sums], "embedding": [float(v) for v in emb.ravel()]})
    return case


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/qnn/qnn_fixtures.json")
    args = ap.parse_args()
    rng = np.random.default_rng(20261128)
    cases = [
        conv_case(rng, "pw_40x24", 40, 24, 3, 5, 1, 1, (0, 0, 0, 0), 7, 128, False),
        conv_case(rng, "pw_16x36_relu_in", 16, 36, 4, 4, 1, 1, (0, 0, 0, 0), 0, 0, False),
        conv_case(rng, "dw_s1_same", 24, 24, 5, 6, 3, 1, (1, 1, 1, 1), 3, 0, True),
        conv_case(rng, "dw_s2_tf_same", 16, 16, 7, 6, 3, 2, (0, 0, 1, 1), 0, 0, True),
        conv_case(rng, "dw_s2_pad1", 8, 8, 6, 5, 3, 2, (1, 1, 1, 1), 250, 60, True),
        add_case(rng, 300),
        body_case(32, 32),
        body_case(24, 40),
    ]
    # EfficientNet-Lite2: its own generator, so the cases above stay as they were.
    rng = np.random.default_rng(20261205)
    cases += [
        conv_case(rng, "dw5_s1_same_c24", 24, 24, 6, 7, 5, 1, (2, 2, 2, 2), 5, 0, True),
        conv_case(rng, "dw5_s2_tf_same_c40", 40, 40, 6, 8, 5, 2, (1, 1, 2, 2), 0, 0, True),
        conv_case(rng, "dw5_s2_tf_same_odd_c48", 48, 48, 7, 9, 5, 2, (1, 1, 2, 2), 17, 3, True),
        conv_case(rng, "dw5_s1_same_c72", 72, 72, 5, 6, 5, 1, (2, 2, 2, 2), 0, 128, True),
        conv_case(rng, "dw5_s1_tiny_c24", 24, 24, 2, 3, 5, 1, (2, 2, 2, 2), 200, 0, True),
        body_case(32, 32, LITE2_MODEL, LITE2_CUT, "lite2_body_32x32"),
        body_case(28, 36, LITE2_MODEL, LITE2_CUT, "lite2_body_28x36"),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"onnxruntime": ort.__version__, "generator": "models/qnn_fixtures.py"}
    args.out.write_text(json.dumps({"meta": meta, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(cases)} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
