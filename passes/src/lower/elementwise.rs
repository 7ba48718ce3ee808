//! Elementwise primitives (one-instruction programs, see [`Program::of_primitive`]) and fused
//! chains: one `Elementwise` launch each, reading every argument at its broadcast strides, a
//! slice where it lies.

use calm_ir::fused::FusedOp;
use calm_ir::program::Program;
use calm_ir::{DType, NodeId, Op, ValueId};

use super::{LowerError, Lowering};
use crate::layout::{broadcast_laid_out, contiguous_strides};
use crate::plan::{BufferId, Kernel, Role};

impl Lowering<'_> {
    pub(super) fn lower_elementwise(&mut self, n: NodeId) -> Result<(), LowerError> {
        let g = self.g;
        let node = &g.nodes[n];
        let out_shape = self.shape(node.results[0])?;
        let program = match &node.op {
            Op::Fused(FusedOp::Elementwise { program, .. }) => program.clone(),
            op => {
                let arg_types: Vec<DType> = node.args.iter().map(|&a| g.value_type(a).dtype).collect();
                let program = Program::of_primitive(op, &arg_types, g.value_type(node.results[0]).dtype)
                    .ok_or_else(|| self.unsupported(n, "no kernel lowers this op"))?;
                if arg_types.iter().any(|t| t.is_int()) && op.is_arithmetic() {
                    return Err(self.unsupported(n, "integer arithmetic runs on the reference executor only"));
                }
                program
            }
        };
        let (reads, kernel) = self.elementwise(&node.args, out_shape, program)?;
        let writes = node.results.iter().map(|&r| self.new_buffer(r, Role::Temp)).collect::<Result<_, _>>()?;
        self.emit(n, kernel, reads, writes)
    }

    /// An elementwise launch of `program` over `shape` and the buffers it reads: each argument
    /// at its broadcast strides, a slice read in place (see [`crate::layout::View`]) at its
    /// producer's row stride from its start.
    pub(super) fn elementwise(
        &self,
        args: &[ValueId],
        shape: Vec<u64>,
        program: Program,
    ) -> Result<(Vec<BufferId>, Kernel), LowerError> {
        let (mut reads, mut strides, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
        for &a in args {
            let own = self.shape(a)?;
            let (buffer, layout, offset) = match self.views[a] {
                Some(view) => {
                    let mut wide = own.clone();
                    *wide.last_mut().expect("a slice has rank >= 1") = view.row_stride;
                    (view.buffer, contiguous_strides(&wide), view.offset)
                }
                None => (self.buf(a), contiguous_strides(&own), 0),
            };
            reads.push(buffer);
            strides.push(broadcast_laid_out(&layout, &own, &shape));
            offsets.push(offset);
        }
        if offsets.iter().all(|&o| o == 0) {
            offsets.clear();
        }
        Ok((reads, Kernel::Elementwise { shape, strides, offsets, program }))
    }
}
