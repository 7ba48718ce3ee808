//! Data movement: reshapes alias their argument's buffer; permutes, broadcasts, slices and
//! concatenations are `Copy` launches, except a slice along the last axis that every reader
//! reads in place (a [`View`]) and a concatenation every reader reads from its parts.

use calm_ir::{NodeId, Op, ValueId};

use super::{LowerError, Lowering};
use crate::layout::{broadcast_strides, contiguous_strides, reads_slices_in_place, View};
use crate::plan::{Kernel, Role};

impl Lowering<'_> {
    pub(super) fn lower_movement(&mut self, n: NodeId) -> Result<(), LowerError> {
        let g = self.g;
        let node = &g.nodes[n];
        let (args, out) = (&node.args, node.results[0]);
        let out_shape = self.shape(out)?;
        match &node.op {
            // Contiguous data reshaped is the same data.
            Op::Reshape { .. } => self.buffer_of[out] = Some(self.buf(args[0])),
            Op::Permute { perm } => {
                let own = contiguous_strides(&self.shape(args[0])?);
                let src_strides = perm.iter().map(|&p| own[p]).collect();
                self.emit_copy(n, args[0], out, src_strides, 0, &out_shape)?;
            }
            Op::Broadcast { .. } => {
                let src_strides = broadcast_strides(&self.shape(args[0])?, &out_shape);
                self.emit_copy(n, args[0], out, src_strides, 0, &out_shape)?;
            }
            Op::Slice { axis, start, .. }
                if *axis + 1 == out_shape.len()
                    && self.views[args[0]].is_none()
                    && !self.is_output(out)
                    && !self.users[out].is_empty()
                    && self.users[out].iter().all(|&u| reads_slices_in_place(g, u, out)) =>
            {
                let row_stride = *self.shape(args[0])?.last().expect("a slice has rank >= 1");
                self.views[out] = Some(View { buffer: self.buf(args[0]), offset: *start, row_stride });
            }
            Op::Slice { axis, start, .. } => {
                let own = contiguous_strides(&self.shape(args[0])?);
                let offset = start * own[*axis];
                self.emit_copy(n, args[0], out, own, offset, &out_shape)?;
            }
            Op::Concat { axis } => match self.read_in_parts(n) {
                Some(parts) => self.split[out] = Some(parts),
                None => {
                    let w = self.new_buffer(out, Role::Temp)?;
                    let dst = contiguous_strides(&out_shape);
                    let mut at = 0;
                    for &a in args {
                        let shape = self.shape(a)?;
                        let kernel = Kernel::Copy {
                            src_strides: contiguous_strides(&shape),
                            src_offset: 0,
                            dst_strides: dst.clone(),
                            dst_offset: at * dst[*axis],
                            shape: shape.clone(),
                        };
                        at += shape[*axis];
                        self.emit(n, kernel, vec![self.buf(a)], vec![w])?;
                    }
                }
            },
            other => unreachable!("{} is not a movement op", other.name()),
        }
        Ok(())
    }

    /// A copy of `src` (read with `src_strides` from `src_offset`) into a new contiguous `out`.
    fn emit_copy(
        &mut self,
        n: NodeId,
        src: ValueId,
        out: ValueId,
        src_strides: Vec<u64>,
        src_offset: u64,
        out_shape: &[u64],
    ) -> Result<(), LowerError> {
        let kernel = Kernel::Copy {
            src_strides,
            src_offset,
            dst_strides: contiguous_strides(out_shape),
            dst_offset: 0,
            shape: out_shape.to_vec(),
        };
        let reads = vec![self.buf(src)];
        let w = self.new_buffer(out, Role::Temp)?;
        self.emit(n, kernel, reads, vec![w])
    }
}
