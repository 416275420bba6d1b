//! teachcam's int8 operators, registered in tract's ONNX op register.
//!
//! [`super::rewrite`] renames the quantised section of a QOperator model to these op types;
//! tract parses them through [`register`], types them, plans and runs them like its own ops.
//! Activations between them are `u8` NHWC (`[1, h, w, c]`), which is what the kernels want;
//! the rewrite guarantees that only these ops ever see those tensors.
//!
//! | op type | replaces | computes |
//! |---|---|---|
//! | `TeachcamStem` | float `Conv` → `Clip` → depthwise `Conv` → `Clip` → `QuantizeLinear` | [`Stem`]: float NCHW → `u8` NHWC |
//! | `TeachcamQuantize` | `QuantizeLinear` | float NCHW (entry) or NHWC → `u8` NHWC |
//! | `TeachcamQConv` | `QLinearConv` (1×1 or depthwise) | [`Pointwise`] / [`Depthwise`] |
//! | `TeachcamAdd` | `DequantizeLinear`(s) → `Add` | [`elementwise::add`], float NHWC out |
//! | `TeachcamDequantMean` | `DequantizeLinear` → `GlobalAveragePool` | [`elementwise::dequantize_mean`] |
//!
//! Each layer's kernel is named in its node's attributes by the rewrite (from a
//! [`super::cpu::KernelPlan`]) and its weights are packed for that kernel when the graph is
//! wired.

use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::arith::{QParams, output_scale};
use super::cpu::{Kernel, parse_kernel};
use super::depthwise::{Depthwise, DepthwiseParams, DwGeom};
use super::elementwise;
use super::pointwise::{Pointwise, PointwiseParams};
use super::stem::{ConvGeom, Stem, StemParams};

/// Op type names used in rewritten graphs.
pub const QUANTIZE: &str = "TeachcamQuantize";
/// See the module table.
pub const QCONV: &str = "TeachcamQConv";
/// See the module table.
pub const QADD: &str = "TeachcamAdd";
/// See the module table.
pub const DEQUANT_MEAN: &str = "TeachcamDequantMean";
/// See the module table.
pub const STEM: &str = "TeachcamStem";

/// Add teachcam's op builders to an ONNX op register.
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert(QUANTIZE, |_, node| {
        let transpose = node.get_attr_opt::<i64>("transpose")?.unwrap_or(1) != 0;
        Ok((expand(Exp::Quantize { transpose }), vec![]))
    });
    reg.insert(QCONV, build_qconv);
    reg.insert(QADD, |_, node| {
        let mask = node.get_attr_opt::<i64>("float_operands")?.unwrap_or(0);
        ensure!((0..4).contains(&mask), "{}: bad float_operands", node.name);
        Ok((
            expand(Exp::Add {
                float_operands: mask as u8,
            }),
            vec![],
        ))
    });
    reg.insert(DEQUANT_MEAN, |_, _| Ok((expand(Exp::Mean), vec![])));
    reg.insert(STEM, |_, node| {
        let geom = |prefix: &str| -> TractResult<ConvGeom> {
            let k: TVec<usize> = node.get_attr_tvec(&format!("{prefix}_kernel"))?;
            let s: TVec<usize> = node.get_attr_tvec(&format!("{prefix}_strides"))?;
            let p: TVec<usize> = node.get_attr_tvec(&format!("{prefix}_pads"))?;
            ensure!(
                k.len() == 2 && s.len() == 2 && p.len() == 4,
                "{}: 2-D geometry expected",
                node.name
            );
            Ok(ConvGeom {
                kernel: (k[0], k[1]),
                stride: (s[0], s[1]),
                pads: [p[0], p[1], p[2], p[3]],
            })
        };
        Ok((
            expand(Exp::Stem {
                conv: geom("conv")?,
                dw: geom("dw")?,
                kernel: kernel_attr(node, "kernel")?,
            }),
            vec![],
        ))
    });
}

fn build_qconv(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let kernel: TVec<usize> = node.get_attr_tvec("kernel_shape")?;
    let strides: TVec<usize> = node.get_attr_opt_tvec("strides")?.unwrap_or(tvec![1, 1]);
    let pads: TVec<usize> = node.get_attr_opt_tvec("pads")?.unwrap_or(tvec![0, 0, 0, 0]);
    let dil: TVec<usize> = node.get_attr_opt_tvec("dilations")?.unwrap_or(tvec![1, 1]);
    let group: usize = node.get_attr_opt("group")?.unwrap_or(1);
    ensure!(
        kernel.len() == 2 && strides.len() == 2 && pads.len() == 4,
        "{}: only 2-D convolutions are supported",
        node.name
    );
    ensure!(
        dil.iter().all(|&d| d == 1),
        "{}: dilated convolutions are not supported",
        node.name
    );
    let auto_pad: Option<String> = node.get_attr_opt("auto_pad")?;
    ensure!(
        auto_pad.as_deref().is_none_or(|p| p == "NOTSET"),
        "{}: auto_pad is not supported",
        node.name
    );
    let conv = ConvAttrs {
        kernel: (kernel[0], kernel[1]),
        stride: (strides[0], strides[1]),
        pads: [pads[0], pads[1], pads[2], pads[3]],
        group,
        pointwise: kernel_attr(node, "pointwise_kernel")?,
        depthwise: kernel_attr(node, "depthwise_kernel")?,
    };
    Ok((expand(Exp::Conv(conv)), vec![]))
}

/// The kernel a rewritten node names in attribute `name` (portable when absent).
fn kernel_attr(node: &NodeProto, name: &str) -> TractResult<Kernel> {
    match node.get_attr_opt::<String>(name)? {
        Some(k) => parse_kernel(&k).map_err(|e| format_err!("{}: {e}", node.name)),
        None => Ok(Kernel::Portable),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConvAttrs {
    kernel: (usize, usize),
    stride: (usize, usize),
    pads: [usize; 4],
    group: usize,
    /// Kernel for the layer if it is a 1×1 one.
    pointwise: Kernel,
    /// Kernel for the layer if it is a depthwise one.
    depthwise: Kernel,
}

impl ConvAttrs {
    fn out_hw(&self, h: usize, w: usize) -> TractResult<(usize, usize)> {
        let ph = h + self.pads[0] + self.pads[2];
        let pw = w + self.pads[1] + self.pads[3];
        ensure!(
            ph >= self.kernel.0 && pw >= self.kernel.1,
            "input {h}x{w} is smaller than the kernel"
        );
        Ok((
            (ph - self.kernel.0) / self.stride.0 + 1,
            (pw - self.kernel.1) / self.stride.1 + 1,
        ))
    }
}

/// The inference-time (ONNX-level) form of the ops: shape rules and wiring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Exp {
    /// `transpose`: the input is NCHW (the entry); otherwise NHWC already.
    Quantize {
        transpose: bool,
    },
    Conv(ConvAttrs),
    /// Bit 0 / bit 1: operand a / b is float (one input) rather than `u8` (three inputs).
    Add {
        float_operands: u8,
    },
    Mean,
    Stem {
        conv: ConvGeom,
        dw: ConvGeom,
        kernel: Kernel,
    },
}

impl Exp {
    /// Input index of each add operand.
    fn add_operands(float_operands: u8) -> (usize, usize) {
        (0, if float_operands & 1 != 0 { 1 } else { 3 })
    }
}

fn dims(shape: &[TDim]) -> Option<TVec<usize>> {
    shape.iter().map(|d| d.to_usize().ok()).collect()
}

impl Expansion for Exp {
    fn name(&self) -> StaticName {
        match self {
            Exp::Quantize { .. } => QUANTIZE,
            Exp::Conv(_) => QCONV,
            Exp::Add { .. } => QADD,
            Exp::Mean => DEQUANT_MEAN,
            Exp::Stem { .. } => STEM,
        }
        .into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        match self {
            Exp::Quantize { transpose } => {
                let transpose = *transpose;
                check_input_arity(inputs, 3)?;
                s.equals(&outputs[0].datum_type, u8::datum_type())?;
                s.equals(&outputs[0].rank, 4)?;
                s.given(&inputs[0].shape, move |s, x| {
                    if let Some(x) = dims(&x) {
                        ensure!(x.len() == 4, "{QUANTIZE}: input must have rank 4");
                        let y = if transpose {
                            [x[0], x[2], x[3], x[1]]
                        } else {
                            [x[0], x[1], x[2], x[3]]
                        };
                        let y: TVec<TDim> = y.iter().map(|d| d.to_dim()).collect();
                        s.equals(&outputs[0].shape, y)?;
                    }
                    Ok(())
                })?;
            }
            Exp::Conv(attrs) => {
                let attrs = *attrs;
                if inputs.len() != 8 {
                    check_input_arity(inputs, 9)?;
                }
                s.equals(&outputs[0].datum_type, u8::datum_type())?;
                s.equals(&outputs[0].rank, 4)?;
                s.given_2(&inputs[0].shape, &inputs[3].shape, move |s, x, w| {
                    if let (Some(x), Some(w)) = (dims(&x), dims(&w)) {
                        ensure!(x.len() == 4 && w.len() == 4, "{QCONV}: 2-D NHWC input");
                        let (oh, ow) = attrs.out_hw(x[1], x[2])?;
                        let y: TVec<TDim> =
                            [x[0], oh, ow, w[0]].iter().map(|d| d.to_dim()).collect();
                        s.equals(&outputs[0].shape, y)?;
                    }
                    Ok(())
                })?;
            }
            Exp::Add { float_operands } => {
                let (_, b) = Exp::add_operands(*float_operands);
                let arity = b + if float_operands & 2 != 0 { 1 } else { 3 };
                check_input_arity(inputs, arity)?;
                s.equals(&outputs[0].datum_type, f32::datum_type())?;
                s.equals(&outputs[0].shape, &inputs[0].shape)?;
                s.equals(&inputs[b].shape, &inputs[0].shape)?;
            }
            Exp::Stem { conv, dw, .. } => {
                let (conv, dw) = (*conv, *dw);
                check_input_arity(inputs, 11)?;
                s.equals(&outputs[0].datum_type, u8::datum_type())?;
                s.equals(&outputs[0].rank, 4)?;
                s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, x, w| {
                    if let (Some(x), Some(w)) = (dims(&x), dims(&w)) {
                        ensure!(x.len() == 4 && w.len() == 4, "{STEM}: 2-D NCHW input");
                        let (h1, w1) = conv
                            .out_size(x[2], x[3])
                            .context("stem input smaller than its kernel")?;
                        let (h2, w2) = dw
                            .out_size(h1, w1)
                            .context("stem input smaller than its kernels")?;
                        let y: TVec<TDim> =
                            [x[0], h2, w2, w[0]].iter().map(|d| d.to_dim()).collect();
                        s.equals(&outputs[0].shape, y)?;
                    }
                    Ok(())
                })?;
            }
            Exp::Mean => {
                check_input_arity(inputs, 3)?;
                s.equals(&outputs[0].datum_type, f32::datum_type())?;
                s.equals(&outputs[0].rank, 4)?;
                s.given(&inputs[0].shape, move |s, x| {
                    if let Some(x) = dims(&x) {
                        ensure!(x.len() == 4, "{DEQUANT_MEAN}: input must be NHWC");
                        let y: TVec<TDim> = [x[0], x[3], 1, 1].iter().map(|d| d.to_dim()).collect();
                        s.equals(&outputs[0].shape, y)?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let konst = |i: usize| -> TractResult<Arc<Tensor>> {
            model
                .outlet_fact(inputs[i])?
                .konst
                .clone()
                .with_context(|| format!("{prefix}: input {i} must be a constant"))
        };
        let qparams = |s: usize, z: usize| -> TractResult<QParams> {
            let zero = konst(z)?;
            ensure!(
                zero.datum_type().unquantized() == u8::datum_type(),
                "{prefix}: activations must be u8"
            );
            Ok(QParams {
                scale: konst(s)?.cast_to_scalar::<f32>()?,
                zero: zero.cast_to_scalar::<i32>()?,
            })
        };
        let kind = match self {
            Exp::Quantize { transpose } => Kind::Quantize(qparams(1, 2)?, *transpose),
            Exp::Add { float_operands } => {
                let (_, b) = Exp::add_operands(*float_operands);
                let qa = if float_operands & 1 != 0 {
                    None
                } else {
                    Some(qparams(1, 2)?)
                };
                let qb = if float_operands & 2 != 0 {
                    None
                } else {
                    Some(qparams(b + 1, b + 2)?)
                };
                Kind::Add(qa, qb)
            }
            Exp::Mean => Kind::Mean(qparams(1, 2)?),
            Exp::Conv(attrs) => {
                let x_fact = model.outlet_fact(inputs[0])?.clone();
                let x_shape = x_fact
                    .shape
                    .as_concrete()
                    .with_context(|| format!("{prefix}: input shape must be fixed"))?
                    .to_vec();
                let qx = qparams(1, 2)?;
                let qy = qparams(6, 7)?;
                let w = konst(3)?;
                ensure!(
                    w.datum_type().unquantized() == i8::datum_type() && w.rank() == 4,
                    "{prefix}: weights must be i8 [out, in/group, kh, kw]"
                );
                let wshape = w.shape().to_vec();
                let (n, cin) = (wshape[0], x_shape[3]);
                let w_scale = f32_vec(&*konst(4)?, n, prefix, "weight scale")?;
                let w_zero: Vec<i32> = i32_vec(&*konst(5)?, n, prefix, "weight zero point")?;
                let bias = if inputs.len() == 9 {
                    i32_vec(&*konst(8)?, n, prefix, "bias")?
                } else {
                    vec![0; n]
                };
                let scale: Vec<f32> = w_scale
                    .iter()
                    .map(|&ws| output_scale(qx.scale, ws, qy.scale))
                    .collect();
                let wv = w.cast_to::<i8>()?;
                let wdata = wv.try_as_plain_ram()?.as_slice::<i8>()?.to_vec();
                let pointwise = attrs.kernel == (1, 1)
                    && attrs.stride == (1, 1)
                    && attrs.pads == [0; 4]
                    && attrs.group == 1
                    && wshape[1] == cin;
                let depthwise = attrs.group == cin && n == cin && wshape[1] == 1;
                let fail = |e: String| format_err!("{prefix}: {e}");
                if pointwise {
                    ensure!(
                        w_zero.iter().all(|&z| z == 0),
                        "{prefix}: 1x1 weights must be symmetric (zero point 0)"
                    );
                    let p = PointwiseParams {
                        n,
                        k: cin,
                        w: &wdata,
                        bias: &bias,
                        scale: &scale,
                        x_zero: qx.zero,
                        y_zero: qy.zero,
                    };
                    // A kernel that cannot take this layer's shape (VNNI wants k in multiples
                    // of 4) leaves it to the portable kernel.
                    let pw = Pointwise::new(&p, attrs.pointwise)
                        .or_else(|_| Pointwise::new(&p, Kernel::Portable))
                        .map_err(fail)?;
                    Kind::Pointwise(pw)
                } else if depthwise {
                    ensure!(
                        wshape[2] == attrs.kernel.0 && wshape[3] == attrs.kernel.1,
                        "{prefix}: kernel_shape does not match the weights"
                    );
                    let p = DepthwiseParams {
                        geom: DwGeom {
                            c: n,
                            kernel: attrs.kernel,
                            stride: attrs.stride,
                            pads: attrs.pads,
                        },
                        w: &wdata,
                        w_zero: &w_zero,
                        bias: &bias,
                        scale: &scale,
                        x_zero: qx.zero,
                        y_zero: qy.zero,
                    };
                    // A kernel that cannot take this layer's shape (the AVX2 one wants
                    // channels in multiples of 16) leaves it to the portable kernel.
                    let d = Depthwise::new(&p, attrs.depthwise)
                        .or_else(|_| Depthwise::new(&p, Kernel::Portable))
                        .map_err(fail)?;
                    Kind::Depthwise(d)
                } else {
                    bail!(
                        "{prefix}: only 1x1 and depthwise quantised convolutions have teachcam kernels"
                    )
                }
            }
            Exp::Stem { conv, dw, kernel } => {
                let floats = |i: usize| -> TractResult<Vec<f32>> {
                    let t = konst(i)?.cast_to::<f32>()?.into_owned();
                    Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
                };
                let scalar = |i: usize| -> TractResult<f32> { konst(i)?.cast_to_scalar::<f32>() };
                let conv_w = konst(1)?;
                ensure!(
                    conv_w.rank() == 4,
                    "{prefix}: conv weights must be [out, in, kh, kw]"
                );
                let (c, cin) = (conv_w.shape()[0], conv_w.shape()[1]);
                let q = qparams(9, 10)?;
                let (conv_w, conv_b, dw_w, dw_b) = (floats(1)?, floats(2)?, floats(5)?, floats(6)?);
                let p = StemParams {
                    cin,
                    c,
                    conv: *conv,
                    conv_w: &conv_w,
                    conv_b: &conv_b,
                    clip1: (scalar(3)?, scalar(4)?),
                    dw: *dw,
                    dw_w: &dw_w,
                    dw_b: &dw_b,
                    clip2: (scalar(7)?, scalar(8)?),
                    q,
                };
                let fail = |e: String| format_err!("{prefix}: {e}");
                Kind::Stem(Stem::new(&p, *kernel).map_err(fail)?)
            }
        };
        let data: TVec<OutletId> = match (self, &kind) {
            (Exp::Add { float_operands }, _) => {
                tvec![inputs[0], inputs[Exp::add_operands(*float_operands).1]]
            }
            _ => tvec![inputs[0]],
        };
        model.wire_node(prefix, QnnOp(Arc::new(kind)), &data)
    }
}

fn f32_vec(t: &Tensor, n: usize, prefix: &str, what: &str) -> TractResult<Vec<f32>> {
    let v = t.cast_to::<f32>()?;
    let s = v.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    broadcast(s, n, prefix, what)
}

fn i32_vec(t: &Tensor, n: usize, prefix: &str, what: &str) -> TractResult<Vec<i32>> {
    let v = t.cast_to::<i32>()?;
    let s = v.try_as_plain_ram()?.as_slice::<i32>()?.to_vec();
    broadcast(s, n, prefix, what)
}

fn broadcast<T: Copy>(v: Vec<T>, n: usize, prefix: &str, what: &str) -> TractResult<Vec<T>> {
    match v.len() {
        1 => Ok(vec![v[0]; n]),
        l if l == n => Ok(v),
        l => bail!("{prefix}: {what} has {l} values for {n} channels"),
    }
}

/// What a [`QnnOp`] computes, with its constants prepared (weights packed) at load.
#[derive(Debug)]
enum Kind {
    /// Quantisation, and whether the input is NCHW (to transpose) or already NHWC.
    Quantize(QParams, bool),
    Pointwise(Pointwise),
    Depthwise(Depthwise),
    /// Float add; `None` marks a float operand, `Some` a `u8` one and its quantisation.
    Add(Option<QParams>, Option<QParams>),
    Mean(QParams),
    Stem(Stem),
}

/// The typed (planned, runnable) form of every teachcam int8 op.
#[derive(Debug, Clone)]
pub struct QnnOp(Arc<Kind>);

impl PartialEq for QnnOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for QnnOp {}

impl Op for QnnOp {
    fn name(&self) -> StaticName {
        match &*self.0 {
            Kind::Quantize(..) => "QnnQuantize",
            Kind::Pointwise(_) => "QnnPointwise",
            Kind::Depthwise(_) => "QnnDepthwise",
            Kind::Add(..) => "QnnAdd",
            Kind::Mean(_) => "QnnDequantMean",
            Kind::Stem(_) => "QnnStem",
        }
        .into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(match &*self.0 {
            Kind::Pointwise(p) => vec![format!("{}x{} kernel {}", p.k(), p.n(), p.kernel().name())],
            Kind::Depthwise(d) => {
                let g = d.geom();
                vec![format!(
                    "c {} kernel {:?} stride {:?} pads {:?} kernel {}",
                    g.c,
                    g.kernel,
                    g.stride,
                    g.pads,
                    d.kernel().name()
                )]
            }
            Kind::Stem(s) => vec![format!("kernel {}", s.kernel().name())],
            _ => vec![],
        })
    }

    op_as_typed_op!();
}

impl EvalOp for QnnOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let shape = input.shape().to_vec();
        let out_fact = self.output_facts(&[&TypedFact::dt_shape(input.datum_type(), &*shape)])?;
        let out_shape = out_fact[0]
            .shape
            .as_concrete()
            .context("output shape")?
            .to_vec();
        let view = input.try_as_plain_ram()?;
        let out = match &*self.0 {
            Kind::Mean(q) => {
                let mut t = Tensor::zero::<f32>(&out_shape)?;
                let mut tv = t.try_as_plain_ram_mut()?;
                elementwise::dequantize_mean(
                    view.as_slice::<u8>()?,
                    shape[3],
                    *q,
                    tv.as_slice_mut()?,
                );
                t
            }
            Kind::Add(qa, qb) => {
                let other = inputs[1].try_as_plain_ram()?;
                let (a, b) = (operand(&view, qa)?, operand(&other, qb)?);
                // SAFETY: every element is written by `add`.
                let mut t = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
                let mut tv = t.try_as_plain_ram_mut()?;
                elementwise::add(a, b, tv.as_slice_mut::<f32>()?);
                t
            }
            kind => {
                // SAFETY: every byte of the output is written by the kernels below.
                let mut t = unsafe { Tensor::uninitialized::<u8>(&out_shape)? };
                let mut tv = t.try_as_plain_ram_mut()?;
                let o = tv.as_slice_mut::<u8>()?;
                match kind {
                    Kind::Quantize(q, true) => {
                        let x = view.as_slice::<f32>()?;
                        elementwise::quantize_nchw_to_nhwc(x, shape[1], shape[2] * shape[3], *q, o)
                    }
                    Kind::Quantize(q, false) => {
                        elementwise::quantize_slice(view.as_slice()?, *q, o)
                    }
                    Kind::Stem(s) => s.run(view.as_slice::<f32>()?, shape[2], shape[3], o),
                    Kind::Pointwise(p) => p.run(view.as_slice::<u8>()?, o),
                    Kind::Depthwise(d) => d.run(view.as_slice::<u8>()?, shape[1], shape[2], o),
                    Kind::Add(..) | Kind::Mean(_) => unreachable!("handled above"),
                }
                t
            }
        };
        Ok(tvec!(out.into_tvalue()))
    }

    op_out_of_plan!();
}

fn operand<'a>(v: &PlainView<'a>, q: &Option<QParams>) -> TractResult<elementwise::Operand<'a>> {
    Ok(match q {
        Some(q) => elementwise::Operand::Int8(v.as_slice::<u8>()?, *q),
        None => elementwise::Operand::Float(v.as_slice::<f32>()?),
    })
}

impl TypedOp for QnnOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = inputs[0]
            .shape
            .as_concrete()
            .context("teachcam int8 ops need fixed shapes")?;
        Ok(tvec!(match &*self.0 {
            Kind::Quantize(_, true) => u8::fact([s[0], s[2], s[3], s[1]]),
            Kind::Quantize(_, false) => u8::fact(s),
            Kind::Pointwise(p) => u8::fact([s[0], s[1], s[2], p.n()]),
            Kind::Depthwise(d) => {
                let (oh, ow) = d
                    .geom()
                    .out_size(s[1], s[2])
                    .context("depthwise input smaller than its kernel")?;
                u8::fact([s[0], oh, ow, d.geom().c])
            }
            Kind::Stem(st) => {
                let (oh, ow) = st
                    .out_size(s[2], s[3])
                    .context("stem input smaller than its kernels")?;
                u8::fact([s[0], oh, ow, st.channels()])
            }
            Kind::Add(..) => f32::fact(s),
            Kind::Mean(_) => f32::fact([s[0], s[3], 1, 1]),
        }))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = inputs[0].shape.as_concrete().context("fixed shape")?;
        let macs = match &*self.0 {
            Kind::Pointwise(p) => s[1] * s[2] * p.k() * p.n(),
            Kind::Depthwise(d) => {
                let g = d.geom();
                let (oh, ow) = g.out_size(s[1], s[2]).unwrap_or((0, 0));
                oh * ow * g.c * g.taps()
            }
            Kind::Stem(st) => st.macs(s[2], s[3]),
            _ => 0,
        };
        Ok(tvec!((Cost::FMA(i32::datum_type()), macs.to_dim())))
    }

    as_op!();
}
