//! teachcam's int8 path: integer kernels for quantised MobileNet layers, registered in tract
//! as custom operators, and the graph rewrite that routes a QOperator model through them.
//!
//! tract 0.23.9 runs `QLinearConv` by lowering it to float-like convolution machinery: the
//! depthwise layers become an eager im2col with one tiny matrix product per channel group,
//! and every layer boundary carries a chain of requantisation ops. The result was 8.7× slower
//! than tract's own float path on the same network. Here the section between the first
//! `QuantizeLinear` and the final average pool stays `u8` NHWC from op to op, the
//! requantisation is folded into each kernel's epilogue, depthwise layers are computed
//! directly, and the float stem in front of the section is one direct op.
//!
//! | module | owns |
//! |---|---|
//! | [`arith`] | the arithmetic contract (onnxruntime's), as scalar reference functions |
//! | [`cpu`] | CPU features and the one decision of which kernel each layer type runs |
//! | [`pointwise`], [`depthwise`], [`stem`], [`elementwise`] | the layers, each with a portable kernel |
//! | `x86` (x86-64), `neon` and `sdot` (aarch64), `arm32` (armv7 NEON), [`tractmm`] (tract-linalg's micro-kernels, every target) | SIMD kernels |
//! | [`rewrite`], [`ops`] | the graph rewrite and the tract ops |
//!
//! Must not: know about files, heads or cameras ([`crate::backbone`] decides when to use it).

pub mod arith;
#[cfg(target_arch = "arm")]
pub mod arm32;
pub mod buf;
pub mod cpu;
pub mod depthwise;
pub mod elementwise;
pub mod layer;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod ops;
pub mod par;
pub mod pointwise;
pub mod pool;
pub mod rewrite;
#[cfg(target_arch = "aarch64")]
pub mod sdot;
pub mod stem;
mod stem_pixels;
pub mod tractmm;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

pub use cpu::KernelPlan;
pub use rewrite::Rewritten;

/// Parse a QOperator model with its quantised section rewritten to teachcam's int8 ops, each
/// layer type on the kernel `plan` names. Fails (naming the node) when the model does not have
/// the shape the rewrite handles.
pub fn model_for_proto(
    mut proto: ModelProto,
    plan: &KernelPlan,
) -> TractResult<(InferenceModel, Rewritten)> {
    let done = rewrite::rewrite(&mut proto, plan)
        .map_err(|e| tract_onnx::tract_hir::internal::format_err!("int8 rewrite: {e}"))?
        .ok_or_else(|| {
            tract_onnx::tract_hir::internal::format_err!(
                "int8 rewrite: the model has no QLinearConv node"
            )
        })?;
    let mut onnx = tract_onnx::onnx();
    ops::register(&mut onnx.op_register);
    Ok((onnx.model_for_proto_model(&proto)?, done))
}

#[cfg(test)]
mod tests;
