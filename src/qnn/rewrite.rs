//! Graph rewrite: route the quantised section of a QOperator ONNX model through teachcam's
//! int8 ops ([`super::ops`]).
//!
//! Works on the ONNX protobuf before tract parses it, so tract sees ordinary nodes with
//! teachcam op types and plans them itself. The section starts at a `QuantizeLinear` of a
//! float tensor and ends at `DequantizeLinear` → `GlobalAveragePool`. Inside it:
//! `QLinearConv` runs on NHWC `u8`; the residual `Add`s, which QOperator graphs compute in
//! float (`DequantizeLinear` on each side, and consecutive adds chain their float sums),
//! become float NHWC adds reading `u8` or float operands, followed by a layout-preserving
//! quantise. The rewrite refuses (and the model is not loaded this way) when anything
//! outside those patterns would see a rewritten tensor, because those tensors are NHWC and
//! tract's ops expect NCHW.
//!
//! In front of the section, the float stem that feeds its first `QuantizeLinear` — `Conv` →
//! `Clip` → depthwise `Conv` → `Clip` — becomes one `TeachcamStem` node when it has exactly
//! that shape and nothing else reads its intermediate tensors; otherwise it is left to tract.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto};

use super::cpu::{KernelPlan, Layer};
use super::ops::{DEQUANT_MEAN, QADD, QCONV, QUANTIZE, STEM};

/// What the rewrite did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// `QuantizeLinear` entries.
    pub quantize: usize,
    /// `QLinearConv` nodes.
    pub conv: usize,
    /// Residual adds.
    pub add: usize,
    /// Dequantise–average-pool pairs.
    pub mean: usize,
    /// Float stems fused into one op.
    pub stem: usize,
}

/// Rewrite `model` in place, naming in each rewritten node the kernel `plan` gives its layer
/// type. `Ok(None)`: nothing to do (no `QLinearConv`); `Err`: the graph has a shape the
/// rewrite does not handle (the model is left unchanged).
pub fn rewrite(model: &mut ModelProto, plan: &KernelPlan) -> Result<Option<Rewritten>, String> {
    let Some(graph) = model.graph.as_mut() else {
        return Err("the model has no graph".into());
    };
    if !graph.node.iter().any(|n| n.op_type == "QLinearConv") {
        return Ok(None);
    }
    let (nodes, done) = rewrite_nodes(graph, plan)?;
    graph.node = nodes;
    // Shapes recorded for intermediate tensors describe the NCHW graph; tract re-infers them.
    graph.value_info.clear();
    Ok(Some(done))
}

fn rewrite_nodes(
    graph: &GraphProto,
    plan: &KernelPlan,
) -> Result<(Vec<NodeProto>, Rewritten), String> {
    let name_of = |l: Layer| plan.get(l).kernel.name();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for inp in &n.input {
            consumers.entry(inp.as_str()).or_default().push(i);
        }
    }
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let consumed_by = |name: &str| -> Vec<&NodeProto> {
        consumers
            .get(name)
            .map(|v| v.iter().map(|&i| &graph.node[i]).collect())
            .unwrap_or_default()
    };

    // Tensors in the int8 NHWC domain, float NHWC tensors (residual sums), and the
    // dequantised views of int8 tensors (name → DequantizeLinear node).
    let mut nhwc: HashSet<String> = HashSet::new();
    let mut fnhwc: HashSet<String> = HashSet::new();
    let mut dq: HashMap<String, &NodeProto> = HashMap::new();
    let mut out = Vec::with_capacity(graph.node.len());
    let mut done = Rewritten::default();
    let (stems, absorbed) = if plan.get(Layer::Stem).kernel == super::cpu::Kernel::TractOps {
        Default::default()
    } else {
        find_stems(graph, &consumers, &graph_outputs, &name_of(Layer::Stem))
    };

    for (index, node) in graph.node.iter().enumerate() {
        if absorbed.contains(&index) {
            continue;
        }
        if let Some(stem) = stems.get(&index) {
            nhwc.insert(stem.output[0].clone());
            out.push(stem.clone());
            done.stem += 1;
            done.quantize += 1;
            continue;
        }
        let name = if node.name.is_empty() {
            node.output.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        };
        let ours = |x: &String| nhwc.contains(x) || fnhwc.contains(x) || dq.contains_key(x);
        match node.op_type.as_str() {
            "QLinearConv" => {
                if !nhwc.contains(&node.input[0]) {
                    return Err(format!(
                        "{name}: input {} is not quantised by a rewritten node",
                        node.input[0]
                    ));
                }
                let mut n = node.clone();
                n.op_type = QCONV.into();
                n.attribute
                    .push(str_attr("pointwise_kernel", &name_of(Layer::Pointwise)));
                n.attribute
                    .push(str_attr("depthwise_kernel", &name_of(Layer::Depthwise)));
                nhwc.insert(n.output[0].clone());
                out.push(n);
                done.conv += 1;
            }
            "QuantizeLinear" if fnhwc.contains(&node.input[0]) => {
                let mut n = node.clone();
                n.op_type = QUANTIZE.into();
                n.attribute = vec![int_attr("transpose", 0)];
                nhwc.insert(n.output[0].clone());
                out.push(n);
            }
            "QuantizeLinear"
                if !ours(&node.input[0])
                    && consumed_by(&node.output[0])
                        .iter()
                        .all(|c| c.op_type == "QLinearConv") =>
            {
                let mut n = node.clone();
                n.op_type = QUANTIZE.into();
                n.attribute = vec![int_attr("transpose", 1)];
                nhwc.insert(n.output[0].clone());
                out.push(n);
                done.quantize += 1;
            }
            "DequantizeLinear" if nhwc.contains(&node.input[0]) => {
                if node.input.len() != 3 {
                    return Err(format!("{name}: DequantizeLinear needs a zero point"));
                }
                // Dropped: its consumers are rewritten below, or the rewrite fails there.
                dq.insert(node.output[0].clone(), node);
            }
            "Add"
                if node.input.len() == 2
                    && node
                        .input
                        .iter()
                        .all(|x| dq.contains_key(x) || fnhwc.contains(x)) =>
            {
                if graph_outputs.contains(node.output[0].as_str()) {
                    return Err(format!("{name}: an int8-section Add is a graph output"));
                }
                let mut inputs = Vec::new();
                let mut mask = 0;
                for (bit, x) in node.input.iter().enumerate() {
                    match dq.get(x) {
                        Some(d) => inputs.extend(d.input.iter().cloned()),
                        None => {
                            mask |= 1 << bit;
                            inputs.push(x.clone());
                        }
                    }
                }
                out.push(NodeProto {
                    name: name.clone(),
                    op_type: QADD.into(),
                    input: inputs,
                    output: node.output.clone(),
                    attribute: vec![int_attr("float_operands", mask)],
                    ..Default::default()
                });
                fnhwc.insert(node.output[0].clone());
                done.add += 1;
            }
            "GlobalAveragePool" if dq.contains_key(&node.input[0]) => {
                let d = dq[&node.input[0]];
                out.push(NodeProto {
                    name: name.clone(),
                    op_type: DEQUANT_MEAN.into(),
                    input: d.input.clone(),
                    output: node.output.clone(),
                    ..Default::default()
                });
                done.mean += 1;
            }
            _ => {
                if let Some(x) = node.input.iter().find(|x| ours(x)) {
                    return Err(format!(
                        "{name} ({}) reads {x}, which teachcam's int8 ops keep in NHWC",
                        node.op_type
                    ));
                }
                out.push(node.clone());
            }
        }
    }
    if let Some(o) = graph
        .output
        .iter()
        .find(|o| nhwc.contains(&o.name) || fnhwc.contains(&o.name) || dq.contains_key(&o.name))
    {
        return Err(format!("graph output {} is an int8 NHWC tensor", o.name));
    }
    // A dropped DequantizeLinear read by anything but the add and mean patterns was refused
    // in the `_` arm above, which checks every remaining node's inputs.
    Ok((out, done))
}

/// A float `Conv` node's geometry and group, when it is a plain 2-D one with a bias.
struct FloatConv {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    pads: Vec<i64>,
    group: i64,
}

fn float_conv(n: &NodeProto) -> Option<FloatConv> {
    if n.op_type != "Conv" || n.input.len() != 3 || n.output.len() != 1 {
        return None;
    }
    let ints = |name: &str| -> Option<Vec<i64>> {
        n.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.clone())
    };
    let int = |name: &str| n.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let auto_pad = n.attribute.iter().find(|a| a.name == "auto_pad");
    if auto_pad.is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
        return None;
    }
    if ints("dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
        return None;
    }
    let kernel = ints("kernel_shape")?;
    let strides = ints("strides").unwrap_or_else(|| vec![1, 1]);
    let pads = ints("pads").unwrap_or_else(|| vec![0, 0, 0, 0]);
    let ok = kernel.len() == 2
        && strides.len() == 2
        && pads.len() == 4
        && kernel.iter().chain(&strides).all(|&v| v > 0)
        && pads.iter().all(|&v| v >= 0);
    ok.then_some(FloatConv {
        kernel,
        strides,
        pads,
        group: int("group").unwrap_or(1),
    })
}

/// Stems to fuse: for each `QuantizeLinear` fed by `Conv → Clip → Conv(depthwise) → Clip`
/// whose intermediate tensors nothing else reads, the `TeachcamStem` node that replaces it
/// (keyed by the quantise node's index), and the indices of the four nodes it absorbs.
fn find_stems(
    graph: &GraphProto,
    consumers: &HashMap<&str, Vec<usize>>,
    graph_outputs: &HashSet<&str>,
    kernel: &str,
) -> (HashMap<usize, NodeProto>, HashSet<usize>) {
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    // The node producing `name`, when `reader` is the only thing that reads `name`.
    let sole = |name: &str, reader: usize| -> Option<usize> {
        let readers = consumers.get(name)?;
        (readers == &[reader] && !graph_outputs.contains(name))
            .then(|| producer.get(name).copied())
            .flatten()
    };
    let mut stems = HashMap::new();
    let mut absorbed = HashSet::new();
    for (qi, q) in graph.node.iter().enumerate() {
        if q.op_type != "QuantizeLinear" || q.input.len() != 3 {
            continue;
        }
        let all_qconv = consumers.get(q.output[0].as_str()).is_some_and(|r| {
            !r.is_empty() && r.iter().all(|&i| graph.node[i].op_type == "QLinearConv")
        });
        if !all_qconv {
            continue;
        }
        let chain = (|| {
            let c2 = sole(&q.input[0], qi)?;
            let clip2 = &graph.node[c2];
            (clip2.op_type == "Clip" && clip2.input.len() == 3).then_some(())?;
            let d = sole(&clip2.input[0], c2)?;
            let dw = &graph.node[d];
            let dwg = float_conv(dw)?;
            let c1 = sole(&dw.input[0], d)?;
            let clip1 = &graph.node[c1];
            (clip1.op_type == "Clip" && clip1.input.len() == 3).then_some(())?;
            let cv = sole(&clip1.input[0], c1)?;
            let conv = &graph.node[cv];
            let cg = float_conv(conv)?;
            (cg.group == 1 && dwg.group > 1).then_some(())?;
            Some(([cv, c1, d, c2], conv, clip1, dw, clip2, cg, dwg))
        })();
        let Some((nodes, conv, clip1, dw, clip2, cg, dwg)) = chain else {
            continue;
        };
        let ints_attr = |name: &str, v: &[i64]| AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        };
        let stem = NodeProto {
            name: format!("{}_stem", conv.name),
            op_type: STEM.into(),
            input: vec![
                conv.input[0].clone(),
                conv.input[1].clone(),
                conv.input[2].clone(),
                clip1.input[1].clone(),
                clip1.input[2].clone(),
                dw.input[1].clone(),
                dw.input[2].clone(),
                clip2.input[1].clone(),
                clip2.input[2].clone(),
                q.input[1].clone(),
                q.input[2].clone(),
            ],
            output: q.output.clone(),
            attribute: vec![
                ints_attr("conv_kernel", &cg.kernel),
                ints_attr("conv_strides", &cg.strides),
                ints_attr("conv_pads", &cg.pads),
                ints_attr("dw_kernel", &dwg.kernel),
                ints_attr("dw_strides", &dwg.strides),
                ints_attr("dw_pads", &dwg.pads),
                str_attr("kernel", kernel),
            ],
            ..Default::default()
        };
        absorbed.extend(nodes);
        stems.insert(qi, stem);
    }
    (stems, absorbed)
}

fn str_attr(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::ValueInfoProto;

    fn plan() -> KernelPlan {
        KernelPlan::for_cpu(crate::qnn::cpu::Cpu::bare(crate::qnn::cpu::Arch::Other))
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            name: format!("{op}_{output}"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, output: &str) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                output: vec![ValueInfoProto {
                    name: output.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The op types of `m`'s nodes, in order.
    fn op_types(m: ModelProto) -> Vec<String> {
        let nodes = m.graph.unwrap().node;
        nodes.into_iter().map(|n| n.op_type).collect()
    }

    fn conv(x: &str, y: &str) -> NodeProto {
        node(
            "QLinearConv",
            &[x, "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
            y,
        )
    }

    #[test]
    fn a_graph_without_qlinearconv_is_left_alone() {
        let mut m = model(vec![node("Relu", &["x"], "y")], "y");
        assert_eq!(rewrite(&mut m, &plan()), Ok(None));
        assert_eq!(m.graph.unwrap().node[0].op_type, "Relu");
    }

    #[test]
    fn the_int8_section_is_renamed_and_its_dequantise_nodes_absorbed() {
        let mut m = model(
            vec![
                node("QuantizeLinear", &["x", "s", "z"], "q"),
                conv("q", "c1"),
                conv("c1", "c2"),
                node("DequantizeLinear", &["c1", "s1", "z1"], "f1"),
                node("DequantizeLinear", &["c2", "s2", "z2"], "f2"),
                node("Add", &["f1", "f2"], "sum"),
                node("QuantizeLinear", &["sum", "s3", "z3"], "q3"),
                conv("q3", "c3"),
                node("DequantizeLinear", &["c3", "s4", "z4"], "f3"),
                node("GlobalAveragePool", &["f3"], "pooled"),
            ],
            "pooled",
        );
        let done = rewrite(&mut m, &plan()).unwrap().unwrap();
        assert_eq!(
            (done.quantize, done.conv, done.add, done.mean),
            (1, 3, 1, 1)
        );
        let ops = op_types(m);
        assert_eq!(
            ops,
            [QUANTIZE, QCONV, QCONV, QADD, QUANTIZE, QCONV, DEQUANT_MEAN]
        );
    }

    #[test]
    fn a_stock_op_reading_an_int8_tensor_is_refused_by_name() {
        for reader in [node("Relu", &["c1"], "r"), node("Relu", &["f1"], "r")] {
            let mut m = model(
                vec![
                    node("QuantizeLinear", &["x", "s", "z"], "q"),
                    conv("q", "c1"),
                    node("DequantizeLinear", &["c1", "s1", "z1"], "f1"),
                    reader,
                ],
                "r",
            );
            let before = m.clone();
            let e = rewrite(&mut m, &plan()).unwrap_err();
            assert!(e.contains("Relu_r") && e.contains("NHWC"), "{e}");
            assert_eq!(m, before, "a refused rewrite leaves the model unchanged");
        }
        // An int8 tensor as a graph output is refused too.
        let mut m = model(
            vec![
                node("QuantizeLinear", &["x", "s", "z"], "q"),
                conv("q", "c1"),
            ],
            "c1",
        );
        assert!(
            rewrite(&mut m, &plan())
                .unwrap_err()
                .contains("graph output c1")
        );
    }

    fn float_conv_node(x: &str, y: &str, group: i64) -> NodeProto {
        let ints = |name: &str, v: &[i64]| AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        };
        let mut n = node("Conv", &[x, &format!("{y}_w"), &format!("{y}_b")], y);
        n.attribute = vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            ints("pads", &[0, 0, 1, 1]),
            int_attr("group", group),
        ];
        n
    }

    fn stem_model(extra_reader: bool) -> ModelProto {
        let mut nodes = vec![
            float_conv_node("x", "c1", 1),
            node("Clip", &["c1", "lo", "hi"], "r1"),
            float_conv_node("r1", "d1", 32),
            node("Clip", &["d1", "lo", "hi"], "r2"),
            node("QuantizeLinear", &["r2", "s", "z"], "q"),
            conv("q", "c2"),
            node("DequantizeLinear", &["c2", "s2", "z2"], "f2"),
            node("GlobalAveragePool", &["f2"], "pooled"),
        ];
        if extra_reader {
            nodes.push(node("Relu", &["r1"], "peek"));
        }
        model(nodes, "pooled")
    }

    #[test]
    fn the_float_stem_is_fused_only_when_nothing_else_reads_it() {
        let mut m = stem_model(false);
        let done = rewrite(&mut m, &plan()).unwrap().unwrap();
        assert_eq!((done.stem, done.quantize, done.conv), (1, 1, 1));
        let g = m.graph.unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, [STEM, QCONV, DEQUANT_MEAN]);
        assert_eq!(g.node[0].input.len(), 11);
        assert_eq!(g.node[0].input[5], "d1_w");
        assert_eq!(g.node[0].output[0], "q");

        let mut m = stem_model(true);
        let done = rewrite(&mut m, &plan()).unwrap().unwrap();
        assert_eq!(done.stem, 0, "a second reader of r1 keeps the float stem");
        let ops = op_types(m);
        assert_eq!(ops[..5], ["Conv", "Clip", "Conv", "Clip", QUANTIZE]);
    }
}
