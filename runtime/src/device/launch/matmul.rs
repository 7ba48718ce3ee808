//! The GEMM: its four kernel variants take the same buffers and differ in blocking and in the
//! unit that multiplies.

use calm_kernels::elementwise::Buf;
use calm_kernels::matmul::{self as kernels, GemmConfig, GemmIo, LanesConfig, NormA, VectorConfig};
use calm_kernels::matmul_tensor::{self as tensor, TensorConfig};
use calm_passes::plan::{ComputeUnit, Gemm, GemmTile, Kernel};
use cubecl::prelude::*;

// The plan sizes the tensor-core GEMM's launch; the kernel is written for the same tile.
const _: () = assert!(
    tensor::TENSOR_TILE == calm_passes::plan::TENSOR_TILE && tensor::TENSOR_PLANES == calm_passes::plan::TENSOR_PLANES
);

use super::{arg, u32_of, Call};
use crate::device::{convert, DeviceFloat};

/// `C = A · B` (then the epilogue) by the `gemm` variant.
pub(super) fn matmul<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::MatMul { ref batch, gemm, ref epilogue, ref grouped, a_split, a_norm, split_k, .. } = *c.kernel else {
        unreachable!("a matmul launch")
    };
    let (epilogue, grouped) = (epilogue.as_ref(), grouped.as_ref());
    let takes =
        "a, b, the epilogue's arguments, A's second part if split, gamma and beta if normed, the index buffer if grouped -> c";
    let ([(_, a), (_, b), rest @ ..], [(_, out)]) = c.buffers() else { c.mismatch(takes) };
    // A grouped GEMM's index buffer is its last read; a plain one reads none (the metadata
    // fills the slot). A split A's second part is the last of the extras: the kernel finds it
    // after the epilogue arguments.
    let (extras, index) = match (grouped, rest) {
        (Some(_), [extras @ .., (_, index)]) => (extras, index),
        (None, extras) => (extras, c.meta()),
        _ => c.mismatch(takes),
    };
    let own = epilogue.map_or(0, |e| e.strides.len());
    if extras.len() != own + usize::from(a_split.is_some()) + 2 * usize::from(a_norm.is_some()) {
        c.mismatch(takes);
    }
    let a_tail = a_split.map(|split| (u32_of(split), own));
    let a_norm =
        a_norm.map(|eps| NormA { eps_bits: (eps as f32).to_bits(), gamma: extras.len() - 2, beta: extras.len() - 1 });
    let fold_experts = grouped.and_then(|g| g.fold_experts);
    let batch = convert::batching(batch.len(), grouped);
    let epilogue = epilogue.map(|e| (convert::ops(&e.program), e.program.outputs[0].0 as usize));
    // The variants' rules (which take a k split, a normalised A, A in two parts, folded rows)
    // were checked on the plan: `KernelPlan::check_launches`.
    let io = GemmIo { batch, epilogue, a_tail, fold_experts, a_norm, split_k };
    let mut extra = SequenceArg::new();
    for (_, x) in extras {
        extra.push(arg::<R>(x));
    }
    let (m, index, client, count, dim) = (arg(c.meta()), arg(index), c.client, c.count, c.dim);
    // The kernels read in bounds by construction (checked by the plan's shapes), so they are
    // launched without per-access bounds checks.
    unsafe {
        match gemm {
            Gemm::SharedTiles(GemmTile { tile_m, tile_n, tile_k, thread_m, thread_n }) => {
                let cfg = GemmConfig { tile_m, tile_n, tile_k, thread_m, thread_n, io };
                let (a, b, out) = (arg(a), arg(b), arg(out));
                kernels::matmul::launch_unchecked::<F, R>(client, count, dim, a, b, extra, out, m, index, cfg)
            }
            Gemm::Registers { rows, cols, .. } => {
                let cfg = LanesConfig { rows, cols, io };
                let (a, b, out) = (arg(a), arg(b), arg(out));
                kernels::matmul_lanes::launch_unchecked::<F, R>(client, count, dim, a, b, extra, out, m, index, cfg)
            }
            Gemm::TensorCores { unit, tile_k } => {
                let cfg = TensorConfig { mma_k: Gemm::mma_k(unit), tile_k, io };
                let (a, b, out) = (arg(a), arg(b), arg(out));
                match unit {
                    ComputeUnit::TensorF16 => tensor::matmul_tensor::launch_unchecked::<F, half::f16, R>(
                        client, count, dim, a, b, extra, out, m, index, cfg,
                    ),
                    ComputeUnit::TensorTf32 => tensor::matmul_tensor::launch_unchecked::<F, tf32, R>(
                        client, count, dim, a, b, extra, out, m, index, cfg,
                    ),
                    _ => tensor::matmul_tensor::launch_unchecked::<F, half::bf16, R>(
                        client, count, dim, a, b, extra, out, m, index, cfg,
                    ),
                }
            }
            Gemm::Vectors { rows, width, .. } => {
                let cfg = VectorConfig { rows, io };
                // A in vectors of 4 along k; B and C in vectors of `width` columns.
                let w = width as usize;
                let (a, b, out) = (vectors(a, 4), vectors(b, w), vectors(out, w));
                kernels::matmul_vector::launch_unchecked::<F, R>(client, count, dim, w, a, b, extra, out, m, index, cfg)
            }
        }
    }
}

/// A buffer as an argument of `width`-element vectors.
fn vectors<R: Runtime>(x: &Buf, width: usize) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(x.handle.clone(), x.len / width) }
}
