//! A differentiable copy of the float backbone: forward pass with a tape, and the gradient of
//! any function of the output with respect to the input (reverse mode), for the small op set
//! MobileNetV2 uses: `Conv` (ordinary, grouped, depthwise, any padding and stride), `Clip`
//! (ReLU6), `Add`, `GlobalAveragePool`, `Flatten`.
//!
//! tract has no backward pass, so this reads the same ONNX file (`models/mobilenetv2_f32.onnx`,
//! checksum-verified like every model) and runs it with its own kernels ([`kernels`]; matrix
//! products by `matrixmultiply`, already in the build through tract's ndarray). docs/looking-inside.md
//! has the measurements behind this choice over an autodiff library.
//!
//! Owns: parsing that op set from an ONNX graph (anything else is refused by node name),
//! shape inference, forward, backward. Weights are constants: only input gradients exist.
//! Must not: know about heads, images or the command line ([`crate::inspect`] does).
//! Invariants: a [`Network`] is immutable once built and can be shared; per-call state
//! lives in a [`Tape`], reused across steps so a step allocates nothing.

pub mod kernels;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::Framework;

use kernels::Geometry;
pub use kernels::Real;

/// Largest tensor (elements) a graph may ask for: bounds allocation before it happens.
const MAX_ELEMENTS: usize = 1 << 26;

/// Why a model cannot be used by the differentiable network.
#[derive(Debug, thiserror::Error)]
pub enum GradError {
    /// The file is missing, unlisted or damaged (see [`crate::backbone::ModelError`]).
    #[error(transparent)]
    Model(#[from] crate::backbone::ModelError),
    /// The graph uses something this network does not implement, or is inconsistent.
    #[error(
        "{path}: {message} (the gradient path supports the float MobileNetV2 graph: Conv, Clip, Add, GlobalAveragePool, Flatten; use models/mobilenetv2_f32.onnx)"
    )]
    Graph {
        /// Model file.
        path: PathBuf,
        /// What is wrong, naming the node.
        message: String,
    },
}

/// Shape of one tensor, batch 1: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Shape {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
enum Op<T> {
    Conv {
        g: Geometry,
        weight: Vec<T>,
        bias: Vec<T>,
    },
    Clip {
        min: T,
        max: T,
    },
    Add,
    GlobalAveragePool,
    Flatten,
}

#[derive(Debug, Clone)]
struct Step<T> {
    name: String,
    op: Op<T>,
    inputs: Vec<usize>,
    output: usize,
}

/// A float network ready to run forward and backward. Immutable; share it freely. `T` is
/// `f32` in use; [`Network::cast`] gives an `f64` copy for gradient checks.
#[derive(Debug, Clone)]
pub struct Network<T = f32> {
    steps: Vec<Step<T>>,
    shapes: Vec<Shape>,
    names: Vec<String>,
    input: usize,
    output: usize,
}

/// Per-call buffers: every tensor's value and gradient, and convolution scratch.
#[derive(Debug, Default)]
pub struct Tape<T = f32> {
    values: Vec<Vec<T>>,
    grads: Vec<Vec<T>>,
    col: Vec<T>,
}

/// One feature-producing layer, for `teachcam features`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// ONNX node name.
    pub node: String,
    /// ONNX tensor name (also the name tract gives the outlet).
    pub name: String,
    /// Operator that produced it.
    pub op: &'static str,
    /// Its shape.
    pub shape: Shape,
}

impl Network<f32> {
    /// Load and verify (checksum) an ONNX file, for a `side`×`side` input.
    pub fn load(path: &Path, side: usize) -> Result<Self, GradError> {
        crate::backbone::verify_model(path)?;
        let proto = tract_onnx::onnx().proto_model_for_path(path).map_err(|e| {
            GradError::Model(crate::backbone::ModelError::Tract {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })
        })?;
        Self::from_proto(&proto, side).map_err(|message| GradError::Graph {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Build from a parsed ONNX model for a `side`×`side` input (the graph's own input size
    /// is ignored: the network is fully convolutional).
    pub fn from_proto(proto: &ModelProto, side: usize) -> Result<Self, String> {
        let g = proto.graph.as_ref().ok_or("the model has no graph")?;
        build(g, side)
    }

    /// The same network in another element type (weights converted).
    pub fn cast<U: Real>(&self) -> Network<U> {
        let steps = self
            .steps
            .iter()
            .map(|s| Step {
                name: s.name.clone(),
                inputs: s.inputs.clone(),
                output: s.output,
                op: match &s.op {
                    Op::Conv { g, weight, bias } => Op::Conv {
                        g: *g,
                        weight: weight.iter().map(|&v| U::of(v)).collect(),
                        bias: bias.iter().map(|&v| U::of(v)).collect(),
                    },
                    Op::Clip { min, max } => Op::Clip {
                        min: U::of(*min),
                        max: U::of(*max),
                    },
                    Op::Add => Op::Add,
                    Op::GlobalAveragePool => Op::GlobalAveragePool,
                    Op::Flatten => Op::Flatten,
                },
            })
            .collect();
        Network {
            steps,
            shapes: self.shapes.clone(),
            names: self.names.clone(),
            input: self.input,
            output: self.output,
        }
    }
}

impl<T: Real> Network<T> {
    /// Shape of the input.
    pub fn input_shape(&self) -> Shape {
        self.shapes[self.input]
    }

    /// Shape of the output.
    pub fn output_shape(&self) -> Shape {
        self.shapes[self.output]
    }

    /// Fresh buffers for [`Network::forward`] / [`Network::backward`].
    pub fn tape(&self) -> Tape<T> {
        Tape {
            values: self
                .shapes
                .iter()
                .map(|s| vec![T::default(); s.len()])
                .collect(),
            grads: self
                .shapes
                .iter()
                .map(|s| vec![T::default(); s.len()])
                .collect(),
            col: Vec::new(),
        }
    }

    /// Every tensor a node produces, in evaluation order (what `features --layer N` indexes).
    pub fn layers(&self) -> Vec<Layer> {
        self.steps
            .iter()
            .map(|s| Layer {
                node: s.name.clone(),
                name: self.names[s.output].clone(),
                op: match s.op {
                    Op::Conv { .. } => "Conv",
                    Op::Clip { .. } => "Clip",
                    Op::Add => "Add",
                    Op::GlobalAveragePool => "GlobalAveragePool",
                    Op::Flatten => "Flatten",
                },
                shape: self.shapes[s.output],
            })
            .collect()
    }

    /// The value a named tensor took in the last forward pass on `tape`.
    pub fn value<'t>(&self, tape: &'t Tape<T>, name: &str) -> Option<&'t [T]> {
        let i = self.names.iter().position(|n| n == name)?;
        tape.values.get(i).map(Vec::as_slice)
    }

    /// Run forward on `input` (NCHW, [`Network::input_shape`]); returns the output, and keeps
    /// every intermediate on `tape` for [`Network::backward`].
    pub fn forward<'t>(&self, tape: &'t mut Tape<T>, input: &[T]) -> &'t [T] {
        assert_eq!(input.len(), self.input_shape().len(), "input size");
        if tape.values.len() != self.shapes.len() {
            *tape = self.tape();
        }
        tape.values[self.input].copy_from_slice(input);
        for s in &self.steps {
            // Take the output buffer out so inputs can be borrowed alongside it.
            let mut y = std::mem::take(&mut tape.values[s.output]);
            let x = &tape.values[s.inputs[0]];
            match &s.op {
                Op::Conv { g, weight, bias } => {
                    kernels::conv_forward(g, weight, bias, x, &mut y, &mut tape.col)
                }
                Op::Clip { min, max } => {
                    for (o, &v) in y.iter_mut().zip(x) {
                        *o = if v < *min {
                            *min
                        } else if v > *max {
                            *max
                        } else {
                            v
                        };
                    }
                }
                Op::Add => {
                    let b = &tape.values[s.inputs[1]];
                    for ((o, &a), &b) in y.iter_mut().zip(x).zip(b) {
                        *o = a + b;
                    }
                }
                Op::GlobalAveragePool => {
                    let hw = self.shapes[s.inputs[0]].h * self.shapes[s.inputs[0]].w;
                    let n = T::of(hw as f32);
                    for (o, plane) in y.iter_mut().zip(x.chunks_exact(hw)) {
                        *o = plane.iter().copied().sum::<T>() / n;
                    }
                }
                Op::Flatten => y.copy_from_slice(x),
            }
            tape.values[s.output] = y;
        }
        &tape.values[self.output]
    }

    /// Gradient with respect to the input of `<d_output, output>`, at the point of the last
    /// [`Network::forward`] on `tape`. Returns it (NCHW, input shape).
    pub fn backward<'t>(&self, tape: &'t mut Tape<T>, d_output: &[T]) -> &'t [T] {
        assert_eq!(d_output.len(), self.output_shape().len(), "gradient size");
        for g in &mut tape.grads {
            g.fill(T::default());
        }
        tape.grads[self.output].copy_from_slice(d_output);
        for s in self.steps.iter().rev() {
            let dy = std::mem::take(&mut tape.grads[s.output]);
            let x0 = s.inputs[0];
            match &s.op {
                Op::Conv { g, weight, .. } => {
                    kernels::conv_backward(g, weight, &dy, &mut tape.grads[x0], &mut tape.col)
                }
                Op::Clip { min, max } => {
                    // Pass the gradient where the clamp was inactive (strictly inside).
                    let x = &tape.values[x0];
                    for ((d, &g), &v) in tape.grads[x0].iter_mut().zip(&dy).zip(x) {
                        if v > *min && v < *max {
                            *d += g;
                        }
                    }
                }
                Op::Add => {
                    for &i in &s.inputs {
                        for (d, &g) in tape.grads[i].iter_mut().zip(&dy) {
                            *d += g;
                        }
                    }
                }
                Op::GlobalAveragePool => {
                    let hw = self.shapes[x0].h * self.shapes[x0].w;
                    let n = T::of(hw as f32);
                    for (plane, &g) in tape.grads[x0].chunks_exact_mut(hw).zip(&dy) {
                        let share = g / n;
                        for d in plane {
                            *d += share;
                        }
                    }
                }
                Op::Flatten => {
                    for (d, &g) in tape.grads[x0].iter_mut().zip(&dy) {
                        *d += g;
                    }
                }
            }
            tape.grads[s.output] = dy;
        }
        &tape.grads[self.input]
    }

    /// Multiply-adds of one forward pass (the backward costs the same).
    pub fn macs(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match &s.op {
                // Every weight meets every output pixel once.
                Op::Conv { weight, .. } => {
                    let o = self.shapes[s.output];
                    o.h * o.w * weight.len()
                }
                _ => 0,
            })
            .sum()
    }
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a tract_onnx::pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn ints(n: &NodeProto, name: &str, default: &[usize]) -> Result<Vec<usize>, String> {
    match attr(n, name) {
        Some(a) => a
            .ints
            .iter()
            .map(|&v| usize::try_from(v).map_err(|_| format!("{}: negative {name}", n.name)))
            .collect(),
        None => Ok(default.to_vec()),
    }
}

/// The float contents of an initializer, with its dimensions; sizes checked before copying.
fn tensor_f32(t: &TensorProto) -> Result<(Vec<usize>, Vec<f32>), String> {
    if t.data_type != DataType::Float as i32 {
        return Err(format!("initializer {} is not float32", t.name));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("initializer {}: bad dims", t.name)))
        .collect::<Result<_, _>>()?;
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("initializer {} is too large", t.name))?;
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != n * 4 {
            return Err(format!(
                "initializer {}: {} bytes for {n} floats",
                t.name,
                t.raw_data.len()
            ));
        }
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        if t.float_data.len() != n {
            return Err(format!(
                "initializer {}: {} values for {n}",
                t.name,
                t.float_data.len()
            ));
        }
        t.float_data.clone()
    };
    Ok((dims, data))
}

fn build(g: &GraphProto, side: usize) -> Result<Network<f32>, String> {
    let inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let input = g
        .input
        .iter()
        .find(|i| !inits.contains_key(i.name.as_str()))
        .ok_or("the graph has no input")?;
    let channels = input
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .and_then(|v| match v {
            tract_onnx::pb::type_proto::Value::TensorType(t) => t.shape.as_ref(),
        })
        .and_then(|s| s.dim.get(1))
        .and_then(|d| match d.value {
            Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                usize::try_from(v).ok()
            }
            _ => None,
        })
        .unwrap_or(3);
    let output_name = &g.output.first().ok_or("the graph has no output")?.name;

    let mut names = vec![input.name.clone()];
    let mut shapes = vec![Shape {
        c: channels,
        h: side,
        w: side,
    }];
    if shapes[0].len() > MAX_ELEMENTS || side == 0 {
        return Err(format!("input side {side} is out of range"));
    }
    let mut index: HashMap<String, usize> = HashMap::from([(input.name.clone(), 0)]);
    let mut steps = Vec::new();
    for n in &g.node {
        let name = if n.name.is_empty() {
            n.output.first().cloned().unwrap_or_default()
        } else {
            n.name.clone()
        };
        let tensor = |i: usize| -> Result<usize, String> {
            let x = n
                .input
                .get(i)
                .ok_or_else(|| format!("{name}: missing input {i}"))?;
            index
                .get(x)
                .copied()
                .ok_or_else(|| format!("{name}: input {x} is not computed before it"))
        };
        let konst = |i: usize| -> Result<(Vec<usize>, Vec<f32>), String> {
            let x = n
                .input
                .get(i)
                .ok_or_else(|| format!("{name}: missing input {i}"))?;
            tensor_f32(
                inits
                    .get(x.as_str())
                    .ok_or_else(|| format!("{name}: {x} must be a constant"))?,
            )
        };
        let (op, inputs, shape) = match n.op_type.as_str() {
            "Conv" => {
                let x = tensor(0)?;
                let xs = shapes[x];
                let (wd, weight) = konst(1)?;
                if wd.len() != 4 {
                    return Err(format!("{name}: only 2-D convolutions are supported"));
                }
                let group = attr(n, "group").map_or(1, |a| a.i.max(1) as usize);
                let kernel = ints(n, "kernel_shape", &wd[2..])?;
                let strides = ints(n, "strides", &[1, 1])?;
                let pads = ints(n, "pads", &[0, 0, 0, 0])?;
                let dil = ints(n, "dilations", &[1, 1])?;
                if let Some(a) = attr(n, "auto_pad")
                    && !a.s.is_empty()
                    && a.s != b"NOTSET"
                {
                    return Err(format!("{name}: auto_pad is not supported"));
                }
                if kernel != wd[2..] || strides.len() != 2 || pads.len() != 4 || dil != [1, 1] {
                    return Err(format!(
                        "{name}: unsupported kernel, stride, pad or dilation"
                    ));
                }
                if xs.c % group != 0 || wd[0] % group != 0 || wd[1] * group != xs.c {
                    return Err(format!("{name}: channels do not match the groups"));
                }
                let bias = if n.input.len() > 2 && !n.input[2].is_empty() {
                    konst(2)?.1
                } else {
                    vec![0.0; wd[0]]
                };
                if bias.len() != wd[0] {
                    return Err(format!("{name}: bias length"));
                }
                let geo = Geometry {
                    cin: xs.c,
                    h: xs.h,
                    w: xs.w,
                    cout: wd[0],
                    kh: wd[2],
                    kw: wd[3],
                    stride: (strides[0], strides[1]),
                    pads: [pads[0], pads[1], pads[2], pads[3]],
                    group,
                };
                let (oh, ow) = geo.out_hw().ok_or_else(|| {
                    format!("{name}: the kernel does not fit a {}x{} input", xs.h, xs.w)
                })?;
                (
                    Op::Conv {
                        g: geo,
                        weight,
                        bias,
                    },
                    vec![x],
                    Shape {
                        c: wd[0],
                        h: oh,
                        w: ow,
                    },
                )
            }
            "Clip" | "Relu" => {
                let x = tensor(0)?;
                let bound = |i: usize, attr_name: &str, default: f32| -> Result<f32, String> {
                    match n.input.get(i).filter(|s| !s.is_empty()) {
                        Some(_) => konst(i)?
                            .1
                            .first()
                            .copied()
                            .ok_or_else(|| format!("{name}: empty {attr_name}")),
                        None => Ok(attr(n, attr_name).map_or(default, |a| a.f)),
                    }
                };
                let (min, max) = if n.op_type == "Relu" {
                    (0.0, f32::INFINITY)
                } else {
                    (
                        bound(1, "min", f32::NEG_INFINITY)?,
                        bound(2, "max", f32::INFINITY)?,
                    )
                };
                (Op::Clip { min, max }, vec![x], shapes[x])
            }
            "Add" => {
                let (a, b) = (tensor(0)?, tensor(1)?);
                if shapes[a] != shapes[b] {
                    return Err(format!("{name}: broadcasting adds are not supported"));
                }
                (Op::Add, vec![a, b], shapes[a])
            }
            "GlobalAveragePool" => {
                let x = tensor(0)?;
                (
                    Op::GlobalAveragePool,
                    vec![x],
                    Shape {
                        c: shapes[x].c,
                        h: 1,
                        w: 1,
                    },
                )
            }
            "Flatten" => {
                let x = tensor(0)?;
                (
                    Op::Flatten,
                    vec![x],
                    Shape {
                        c: shapes[x].len(),
                        h: 1,
                        w: 1,
                    },
                )
            }
            other => return Err(format!("{name}: operator {other} is not supported")),
        };
        if shape.len() > MAX_ELEMENTS {
            return Err(format!("{name}: output too large"));
        }
        let out = n
            .output
            .first()
            .ok_or_else(|| format!("{name}: no output"))?;
        names.push(out.clone());
        shapes.push(shape);
        index.insert(out.clone(), shapes.len() - 1);
        steps.push(Step {
            name,
            op,
            inputs,
            output: shapes.len() - 1,
        });
    }
    let output = *index
        .get(output_name)
        .ok_or_else(|| format!("graph output {output_name} is not computed"))?;
    if steps.is_empty() {
        return Err("the graph has no nodes".into());
    }
    Ok(Network {
        steps,
        shapes,
        names,
        input: 0,
        output,
    })
}

#[cfg(test)]
mod tests;
