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

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto};

use super::ops::{DEQUANT_MEAN, QADD, QCONV, QUANTIZE};

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
}

/// Rewrite `model` in place. `Ok(None)`: nothing to do (no `QLinearConv`); `Err`: the graph
/// has a shape the rewrite does not handle (the model is left unchanged).
pub fn rewrite(model: &mut ModelProto) -> Result<Option<Rewritten>, String> {
    let Some(graph) = model.graph.as_mut() else {
        return Err("the model has no graph".into());
    };
    if !graph.node.iter().any(|n| n.op_type == "QLinearConv") {
        return Ok(None);
    }
    let (nodes, done) = rewrite_nodes(graph)?;
    graph.node = nodes;
    // Shapes recorded for intermediate tensors describe the NCHW graph; tract re-infers them.
    graph.value_info.clear();
    Ok(Some(done))
}

fn rewrite_nodes(graph: &GraphProto) -> Result<(Vec<NodeProto>, Rewritten), String> {
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

    for node in &graph.node {
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
        assert_eq!(rewrite(&mut m), Ok(None));
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
        let done = rewrite(&mut m).unwrap().unwrap();
        assert_eq!(
            (done.quantize, done.conv, done.add, done.mean),
            (1, 3, 1, 1)
        );
        let ops: Vec<String> = m
            .graph
            .unwrap()
            .node
            .into_iter()
            .map(|n| n.op_type)
            .collect();
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
            let e = rewrite(&mut m).unwrap_err();
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
        assert!(rewrite(&mut m).unwrap_err().contains("graph output c1"));
    }
}
