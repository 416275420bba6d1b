//! Exactness of the int8 kernels and of the whole rewritten int8 section against onnxruntime,
//! from the committed fixtures (`tests/fixtures/qnn/qnn_fixtures.json`, written by
//! `models/qnn_fixtures.py`). Unit tests, so `make test-arm` runs them under qemu for
//! aarch64 and armv7 too.

use std::path::Path;

use serde_json::Value;
use tract_onnx::prelude::*;

use super::arith::{QParams, output_scale};
use super::cpu::{Cpu, Kernel, KernelPlan, Layer, runnable_kernels};
use super::depthwise::{Depthwise, DepthwiseParams, DwGeom};
use super::elementwise::{self, Operand};
use super::pointwise::{Pointwise, PointwiseParams};

fn fixtures() -> Value {
    serde_json::from_str(include_str!("../../tests/fixtures/qnn/qnn_fixtures.json")).unwrap()
}

fn cases(kind: &str) -> Vec<Value> {
    let all: Vec<Value> = fixtures()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .cloned()
        .collect();
    assert!(!all.is_empty(), "no {kind} fixtures");
    all
}

fn ints<T: TryFrom<i64>>(v: &Value) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| T::try_from(x.as_i64().unwrap()).unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn n(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn scales(c: &Value) -> Vec<f32> {
    floats(&c["w_scale"])
        .iter()
        .map(|&ws| output_scale(f(&c["x_scale"]), ws, f(&c["y_scale"])))
        .collect()
}

fn mismatches(got: &[u8], want: &[u8]) -> usize {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).filter(|(a, b)| a != b).count()
}

/// Every kernel `layer` has on this CPU, run on case `c` by `run` into an output as long as
/// `want`, gives `want` exactly. `run` returns false when the kernel refuses the case's shape
/// (e.g. AVX2 depthwise needs channels in multiples of 16: the graph falls back to portable
/// for such layers, so there is nothing to check).
fn every_kernel_gives(
    c: &Value,
    layer: Layer,
    want: &[u8],
    run: impl Fn(Kernel, &mut [u8]) -> bool,
) {
    for kernel in runnable_kernels(layer, &Cpu::detect()) {
        let mut got = vec![0u8; want.len()];
        if run(kernel, &mut got) {
            let name = kernel.name();
            assert_eq!(mismatches(&got, want), 0, "{} ({name})", c["name"]);
        }
    }
}

#[test]
fn every_pointwise_kernel_matches_onnxruntime_bit_for_bit() {
    for c in cases("pointwise") {
        let (k, nout) = (n(&c["c_in"]), n(&c["c_out"]));
        let x: Vec<u8> = ints(&c["x"]);
        let want: Vec<u8> = ints(&c["y"]);
        let (w, bias, scale): (Vec<i8>, Vec<i32>, Vec<f32>) =
            (ints(&c["weights"]), ints(&c["bias"]), scales(&c));
        let p = PointwiseParams {
            n: nout,
            k,
            w: &w,
            bias: &bias,
            scale: &scale,
            x_zero: c["x_zero"].as_i64().unwrap() as i32,
            y_zero: c["y_zero"].as_i64().unwrap() as i32,
        };
        every_kernel_gives(&c, Layer::Pointwise, &want, |kernel, got| {
            Pointwise::new(&p, kernel).unwrap().run(&x, got);
            true
        });
    }
}

#[test]
fn every_depthwise_kernel_matches_onnxruntime_bit_for_bit() {
    for c in cases("depthwise") {
        let ch = n(&c["c_in"]);
        let kernel = n(&c["kernel"]);
        let stride = n(&c["stride"]);
        let pads: Vec<usize> = ints::<i64>(&c["pads"])
            .iter()
            .map(|&p| p as usize)
            .collect();
        let geom = DwGeom {
            c: ch,
            kernel: (kernel, kernel),
            stride: (stride, stride),
            pads: [pads[0], pads[1], pads[2], pads[3]],
        };
        let (w, bias, scale): (Vec<i8>, Vec<i32>, Vec<f32>) =
            (ints(&c["weights"]), ints(&c["bias"]), scales(&c));
        let w_zero = vec![0; ch];
        let p = DepthwiseParams {
            geom,
            w: &w,
            w_zero: &w_zero,
            bias: &bias,
            scale: &scale,
            x_zero: c["x_zero"].as_i64().unwrap() as i32,
            y_zero: c["y_zero"].as_i64().unwrap() as i32,
        };
        let (h, wd) = (n(&c["h"]), n(&c["w"]));
        assert_eq!(
            geom.out_size(h, wd),
            Some((n(&c["oh"]), n(&c["ow"]))),
            "{}",
            c["name"]
        );
        let (x, want): (Vec<u8>, Vec<u8>) = (ints(&c["x"]), ints(&c["y"]));
        every_kernel_gives(&c, Layer::Depthwise, &want, |kernel, got| {
            let Ok(d) = Depthwise::new(&p, kernel) else {
                return false;
            };
            d.run(&x, h, wd, got);
            true
        });
    }
}

#[test]
fn residual_add_chain_matches_onnxruntime_bit_for_bit() {
    for c in cases("add") {
        let q = |s: &str, z: &str| QParams {
            scale: f(&c[s]),
            zero: c[z].as_i64().unwrap() as i32,
        };
        let (a, b, cc): (Vec<u8>, Vec<u8>, Vec<u8>) = (ints(&c["a"]), ints(&c["b"]), ints(&c["c"]));
        let len = a.len();
        let mut sum1 = vec![0f32; len];
        elementwise::add(
            Operand::Int8(&a, q("sa", "za")),
            Operand::Int8(&b, q("sb", "zb")),
            &mut sum1,
        );
        let mut sum2 = vec![0f32; len];
        elementwise::add(
            Operand::Float(&sum1),
            Operand::Int8(&cc, q("sc", "zc")),
            &mut sum2,
        );
        let (mut y1, mut y2) = (vec![0u8; len], vec![0u8; len]);
        elementwise::quantize_slice(&sum1, q("s1", "z1"), &mut y1);
        elementwise::quantize_slice(&sum2, q("s2", "z2"), &mut y2);
        assert_eq!(mismatches(&y1, &ints::<u8>(&c["y1"])), 0, "first add");
        assert_eq!(mismatches(&y2, &ints::<u8>(&c["y2"])), 0, "chained add");
    }
}

/// The formula input of the body fixtures (same f32 operations as the generator's numpy).
fn formula_input(h: usize, w: usize) -> Vec<f32> {
    (0..32 * h * w)
        .map(|i| ((i as u64 * 7919) % 1000) as f32 / 1000.0f32 * 6.0f32)
        .collect()
}

/// A shipped QOperator model (the body case `c` names it; MobileNetV2's when it does not)
/// cut at the float input of its int8 section, on `plan`'s kernels.
fn int8_section(c: &Value, plan: &KernelPlan) -> std::sync::Arc<TypedRunnableModel> {
    let (h, w) = (n(&c["h"]), n(&c["w"]));
    let file = c["model"].as_str().unwrap_or("mobilenetv2_qop.onnx");
    let cut = c["cut"].as_str().unwrap_or("expanded_conv_depthwise_relu");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(file);
    let mut proto = tract_onnx::onnx().proto_model_for_path(&path).unwrap();
    let g = proto.graph.as_mut().unwrap();
    let start = g
        .node
        .iter()
        .position(|n| n.input.first().is_some_and(|i| i == cut))
        .unwrap();
    g.node.drain(..start);
    let mut input = g.input[0].clone();
    input.name = cut.into();
    g.input = vec![input];
    let (model, done) = super::model_for_proto(proto, plan).unwrap();
    let want = match c.get("rewrite") {
        Some(r) => (
            n(&r["quantize"]),
            n(&r["conv"]),
            n(&r["add"]),
            n(&r["mean"]),
        ),
        None => (1, 50, 10, 1),
    };
    assert_eq!(
        (done.quantize, done.conv, done.add, done.mean),
        want,
        "rewrite of {file}"
    );
    model
        .with_input_fact(0, f32::fact([1, 32, h, w]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

/// Every kernel plan to check on this CPU: the default, then each other runnable 1×1 and
/// depthwise kernel in turn.
fn plans() -> Vec<KernelPlan> {
    let cpu = Cpu::detect();
    let base = KernelPlan::for_cpu(cpu);
    let mut v = vec![base.clone()];
    for layer in [Layer::Pointwise, Layer::Depthwise] {
        for k in runnable_kernels(layer, &cpu).into_iter().skip(1) {
            v.push(base.clone().with(layer, k));
        }
    }
    v
}

#[test]
fn int8_section_of_the_shipped_model_matches_onnxruntime_exactly() {
    for kernels in plans() {
        body_cases_match(&kernels);
    }
}

fn body_cases_match(kernels: &KernelPlan) {
    let label = format!(
        "pointwise {}, depthwise {}",
        kernels.pointwise.kernel.name(),
        kernels.depthwise.kernel.name()
    );
    let models: std::collections::BTreeSet<&str> = cases("body")
        .iter()
        .map(|c| c["model"].as_str().unwrap_or("mobilenetv2_qop.onnx"))
        .map(|m| {
            if m.starts_with("efficientnet") {
                "lite2"
            } else {
                "mnv2"
            }
        })
        .collect();
    assert_eq!(models.len(), 2, "body cases of both shipped int8 models");
    for c in cases("body") {
        let (h, w) = (n(&c["h"]), n(&c["w"]));
        let plan = int8_section(&c, kernels);
        let x = Tensor::from_shape(&[1, 32, h, w], &formula_input(h, w)).unwrap();
        let out = plan.run(tvec!(x.into())).unwrap();
        let emb: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let want = floats(&c["embedding"]);
        assert_eq!(emb.len(), want.len());
        // Recover the integer channel sums from the mean: exact, because the sums are small
        // integers and the float error of scale/pixels is far below half a step.
        let hw = ints::<i64>(&c["out_hw"]).iter().product::<i64>() as f32;
        let scale = {
            // The final scale is the one that maps the fixture's sums to its embedding.
            let (i, s) = ints::<i64>(&c["sums"])
                .into_iter()
                .enumerate()
                .max_by_key(|(_, s)| *s)
                .unwrap();
            want[i] * hw / s as f32
        };
        let sums: Vec<i64> = emb
            .iter()
            .map(|&e| (e * hw / scale).round() as i64)
            .collect();
        let want_sums: Vec<i64> = ints(&c["sums"]);
        let wrong = sums.iter().zip(&want_sums).filter(|(a, b)| a != b).count();
        assert_eq!(
            wrong,
            0,
            "{} ({label}): {wrong} of {} channel sums differ",
            c["name"],
            sums.len()
        );
        assert!(
            want_sums.iter().filter(|&&s| s != 0).count() > 100,
            "degenerate fixture"
        );
        for (a, b) in emb.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}

/// `f` on one thread and inside pools of 2 and 3 threads gives the same bytes each time.
fn same_on_every_thread_count(name: &str, f: impl Fn() -> Vec<u8>) {
    let one = f();
    assert!(one.iter().any(|&v| v != one[0]), "{name}: degenerate data");
    for t in [2, 3] {
        let pool = std::sync::Arc::new(super::pool::Pool::new(t).unwrap());
        let got = super::par::with_pool(&pool, &f);
        assert_eq!(mismatches(&got, &one), 0, "{name} on {t} threads");
    }
}

#[test]
fn every_pointwise_kernel_gives_the_same_bytes_on_any_thread_count() {
    let mut r = crate::rng::Rng::new(11);
    // 203 pixels: parts of whole 8-pixel tiles and a ragged last one.
    let (k, nout, pixels) = (32usize, 64usize, 203usize);
    let x: Vec<u8> = (0..pixels * k).map(|_| r.below(256) as u8).collect();
    let w: Vec<i8> = (0..nout * k)
        .map(|_| (r.below(255) as i32 - 127) as i8)
        .collect();
    let bias: Vec<i32> = (0..nout).map(|_| r.below(4000) as i32 - 2000).collect();
    let scale = vec![0.0004f32; nout];
    let p = PointwiseParams {
        n: nout,
        k,
        w: &w,
        bias: &bias,
        scale: &scale,
        x_zero: 3,
        y_zero: 7,
    };
    assert!(super::par::ranges(pixels, 3, 8, (32_768 / (k * nout)).max(8)).len() == 3);
    for kernel in runnable_kernels(Layer::Pointwise, &Cpu::detect()) {
        let layer = Pointwise::new(&p, kernel).unwrap();
        same_on_every_thread_count(&kernel.name(), || {
            let mut out = vec![0u8; pixels * nout];
            layer.run(&x, &mut out);
            out
        });
    }
}

#[test]
fn every_depthwise_kernel_gives_the_same_bytes_on_any_thread_count() {
    let mut r = crate::rng::Rng::new(12);
    let (c, h, w) = (32usize, 29usize, 23usize);
    let x: Vec<u8> = (0..h * w * c).map(|_| r.below(256) as u8).collect();
    for (kernel_side, stride, pad) in [(3usize, 1usize, 1usize), (3, 2, 1), (5, 1, 2), (5, 2, 2)] {
        let geom = DwGeom {
            c,
            kernel: (kernel_side, kernel_side),
            stride: (stride, stride),
            pads: [pad; 4],
        };
        let wts: Vec<i8> = (0..c * kernel_side * kernel_side)
            .map(|_| (r.below(255) as i32 - 127) as i8)
            .collect();
        let bias: Vec<i32> = (0..c).map(|_| r.below(4000) as i32 - 2000).collect();
        let (w_zero, scale) = (vec![0; c], vec![0.002f32; c]);
        let p = DepthwiseParams {
            geom,
            w: &wts,
            w_zero: &w_zero,
            bias: &bias,
            scale: &scale,
            x_zero: 5,
            y_zero: 9,
        };
        let (oh, ow) = geom.out_size(h, w).unwrap();
        let mut ran = 0;
        for kernel in runnable_kernels(Layer::Depthwise, &Cpu::detect()) {
            // A kernel may refuse a shape (the graph then uses another); 3×3 suits them all.
            let Ok(layer) = Depthwise::new(&p, kernel) else {
                assert_ne!(kernel_side, 3, "{} refused 3x3", kernel.name());
                continue;
            };
            ran += 1;
            let name = format!("{} {kernel_side}x{kernel_side}/{stride}", kernel.name());
            same_on_every_thread_count(&name, || {
                let mut out = vec![0u8; oh * ow * c];
                layer.run(&x, h, w, &mut out);
                out
            });
        }
        assert!(ran > 0, "no kernel ran {kernel_side}x{kernel_side}");
    }
}

#[test]
fn int8_section_gives_the_same_embedding_on_any_thread_count() {
    // The whole rewritten int8 section of both shipped models, default kernels, split over
    // 2 and 3 threads: still onnxruntime's integers exactly.
    let kernels = KernelPlan::for_cpu(Cpu::detect());
    for t in [2, 3] {
        let pool = std::sync::Arc::new(super::pool::Pool::new(t).unwrap());
        super::par::with_pool(&pool, || body_cases_match(&kernels));
    }
}
