//! teachcam's int8 path: integer kernels for quantised MobileNet layers, registered in tract
//! as custom operators, and the graph rewrite that routes a QOperator model through them.
//!
//! tract 0.23.9 runs `QLinearConv` by lowering it to float-like convolution machinery: the
//! depthwise layers become an eager im2col with one tiny matrix product per channel group,
//! and every layer boundary carries a chain of requantisation ops. The result was 8.7× slower
//! than tract's own float path on the same network. Here the section between the first
//! `QuantizeLinear` and the final average pool stays `u8` NHWC from op to op, the
//! requantisation is folded into each kernel's epilogue, depthwise layers are computed
//! directly, and 1×1 layers use VNNI dot products where the CPU has them.
//!
//! Must not: know about files, heads or cameras ([`crate::backbone`] decides when to use it).

pub mod kernels;
pub mod ops;
pub mod rewrite;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

pub use rewrite::Rewritten;

/// Parse a QOperator model with its quantised section rewritten to teachcam's int8 ops.
/// Fails (naming the node) when the model does not have the shape the rewrite handles.
pub fn model_for_proto(mut proto: ModelProto) -> TractResult<(InferenceModel, Rewritten)> {
    let done = rewrite::rewrite(&mut proto)
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

/// The pointwise kernel this CPU gets (for reports).
pub fn pointwise_kernel_name() -> &'static str {
    kernels::Pointwise::new(8, 4, vec![0; 32], vec![0; 8], vec![1.0; 8], 0, 0).kernel_name()
}

#[cfg(test)]
mod tests;
