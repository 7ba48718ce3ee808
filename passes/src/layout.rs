//! How tensors lie in flat device buffers: row-major strides, broadcast reads, the
//! `[outer, len, inner]` view of an axis, and slices read where they lie. The lowering, the
//! memory planner and the fusion passes that decide what may be read in place share these rules
//! from here, so they cannot drift apart.

use calm_ir::fused::FusedOp;
use calm_ir::{Graph, NodeId, Op, ValueId};

use crate::plan::BufferId;

/// Row-major strides of a contiguous tensor.
pub fn contiguous_strides(shape: &[u64]) -> Vec<u64> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Strides reading a contiguous `arg` at each coordinate of `out` under numpy broadcasting
/// (0 along broadcast dimensions).
pub fn broadcast_strides(arg: &[u64], out: &[u64]) -> Vec<u64> {
    broadcast_laid_out(&contiguous_strides(arg), arg, out)
}

/// [`broadcast_strides`] for an `arg` laid out at strides `own`.
pub fn broadcast_laid_out(own: &[u64], arg: &[u64], out: &[u64]) -> Vec<u64> {
    let offset = out.len() - arg.len();
    (0..out.len())
        .map(|d| if d < offset || arg[d - offset] != out[d] || arg[d - offset] == 1 { 0 } else { own[d - offset] })
        .collect()
}

/// `[outer, len, inner]` around `axis`.
pub fn around(shape: &[u64], axis: usize) -> (u64, u64, u64) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// The stride per flattened row of an argument read at `full` (its broadcast strides over a
/// product of `shape`) when the product's leading dimensions are folded into its rows, if one
/// stride serves: rows walk the batch dimensions, then the rows, so the argument must advance
/// by the same stride per flattened row throughout. Dimensions of size 1 do not move.
pub fn flat_row_stride(full: &[u64], shape: &[u64]) -> Option<u64> {
    let rank = shape.len();
    let after = |d: usize| shape[d + 1..rank - 1].iter().product::<u64>();
    let moving: Vec<usize> = (0..rank - 1).filter(|&d| shape[d] > 1).collect();
    let row = moving.last().map_or(0, |&d| full[d] / after(d));
    moving.iter().all(|&d| full[d] == row * after(d)).then_some(row)
}

/// A slice along the last axis of a contiguous result, read where it lies: element `[.., j]` of
/// row `r` is at `offset + r · row_stride + j` in `buffer`.
#[derive(Copy, Clone, Debug)]
pub struct View {
    pub buffer: BufferId,
    pub offset: u64,
    pub row_stride: u64,
}

/// A concatenation of two parts along the last axis that is never stored: every reader (the
/// `A` of a GEMM) reads columns `..head_width` from `head` and the rest from `tail`, each a
/// contiguous buffer of its own.
#[derive(Copy, Clone, Debug)]
pub struct Parts {
    pub head: BufferId,
    pub tail: BufferId,
    pub head_width: u64,
}

/// Whether node `reader` can read `v` as a [`View`] into a wider row-major result: the row
/// operand of a matmul against a matrix, the q, k, v of a fused attention, and elementwise ops
/// (which read each argument at its own strides and start). The projection fusion declines
/// where this fails; the lowering then reads such slices in place.
pub fn reads_slices_in_place(g: &Graph, reader: NodeId, v: ValueId) -> bool {
    let node = &g.nodes[reader];
    match &node.op {
        Op::MatMul { transpose_a: false, .. } | Op::Fused(FusedOp::MatMulEpilogue { transpose_a: false, .. }) => {
            node.args[0] == v && !node.args[1..].contains(&v) && g.value_type(node.args[1]).rank() == 2
        }
        Op::Fused(FusedOp::Attention { bias, .. }) => !*bias || node.args[3] != v,
        Op::Fused(FusedOp::Elementwise { .. }) => true,
        op => op.is_elementwise(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_for_contiguous_and_broadcast_reads() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<u64>::new());
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), [0, 1, 0]);
        assert_eq!(broadcast_strides(&[4], &[2, 3, 4]), [0, 0, 1]);
        assert_eq!(broadcast_strides(&[], &[5]), [0]);
        assert_eq!(broadcast_strides(&[1, 1], &[1, 1]), [0, 0]);
    }
}
