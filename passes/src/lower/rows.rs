//! Row kernels: softmax and log-softmax along an axis, layer norm over the last axis, and
//! reductions (one launch per reduced axis; a fused reduction evaluates its elementwise
//! prologue as it reads).

use calm_ir::fused::{FusedOp, Reduction};
use calm_ir::program::Program;
use calm_ir::{NodeId, Op};

use super::{LowerError, Lowering};
use crate::layout::{around, broadcast_strides};
use crate::plan::{Kernel, Prologue, Role, Storage};

/// The shortest line a row kernel gives a cube of its own: below a plane's width most of the
/// cube would idle, and one thread per line is as fast.
pub const ROW_CUBE_MIN_LEN: u64 = 32;

impl Lowering<'_> {
    /// Threads per line of a row kernel over lines of `len` elements `inner` apart: a cube of
    /// about a quarter as many threads as elements (a power of two, at least 32, at most the
    /// device's setting or 32 where that is less) for contiguous lines long enough, else one
    /// thread per line (`None`).
    pub(super) fn row_cube(&self, len: u64, inner: u64) -> Option<u32> {
        // The largest power of two within the setting: the cube's tree of halvings needs one.
        let most = 1u32 << self.opts.row_threads?.max(32).ilog2();
        let threads = len.div_ceil(4).next_power_of_two().clamp(32, most as u64) as u32;
        (inner == 1 && len >= ROW_CUBE_MIN_LEN).then_some(threads)
    }

    /// The plane width a cube per line of `row_cube` threads combines within: the device's,
    /// where it has planes of one width that divides the cube.
    pub(super) fn row_plane(&self, row_cube: Option<u32>) -> Option<u32> {
        let threads = row_cube?;
        self.opts.plane_width.filter(|&w| w.is_power_of_two() && threads % w == 0)
    }

    pub(super) fn lower_rows(&mut self, n: NodeId) -> Result<(), LowerError> {
        let node = &self.g.nodes[n];
        let (args, out) = (&node.args, node.results[0]);
        let out_shape = self.shape(out)?;
        let kernel = match &node.op {
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let (outer, len, inner) = around(&out_shape, *axis);
                let log = matches!(node.op, Op::LogSoftmax { .. });
                let row_cube = self.row_cube(len, inner);
                Kernel::Softmax { outer, len, inner, log, row_cube, plane: self.row_plane(row_cube) }
            }
            Op::LayerNorm { eps } => {
                let cols = *out_shape.last().expect("layer norm has rank >= 1");
                let rows = out_shape.iter().product::<u64>() / cols;
                let row_cube = self.row_cube(cols, 1);
                Kernel::LayerNorm { rows, cols, eps: *eps, grouped: None, row_cube, plane: self.row_plane(row_cube) }
            }
            Op::Fused(FusedOp::Reduce { reduction, axes, program, .. }) => {
                return self.lower_reduce(n, *reduction, axes, Some(program));
            }
            op => {
                let (reduction, axes, _) = Reduction::of(op).expect("a row op or a reduction");
                return self.lower_reduce(n, reduction, axes, None);
            }
        };
        let reads = self.bufs(args);
        let w = self.new_buffer(out, Role::Temp)?;
        self.emit(n, kernel, reads, vec![w])
    }

    /// A reduction over `axes`, one launch per axis (the last axis first); with a `program`,
    /// the first launch evaluates it over the node's arguments instead of reading a stored
    /// input.
    fn lower_reduce(
        &mut self,
        n: NodeId,
        op: Reduction,
        axes: &[usize],
        program: Option<&Program>,
    ) -> Result<(), LowerError> {
        let (args, out) = (self.g.nodes[n].args.clone(), self.g.nodes[n].results[0]);
        if self.g.value_type(out).dtype.is_int() {
            return Err(self.unsupported(n, "integer reductions run on the reference executor only"));
        }
        // The reduced shape: a fused reduction's arguments broadcast to it.
        let shapes = args.iter().map(|&a| self.shape(a)).collect::<Result<Vec<_>, _>>()?;
        let rank = shapes.iter().map(Vec::len).max().unwrap_or(0);
        let mut shape = vec![1u64; rank];
        for s in &shapes {
            for (d, &size) in s.iter().enumerate() {
                let at = rank - s.len() + d;
                if size != 1 {
                    shape[at] = size;
                }
            }
        }
        let mut prologue = match program {
            Some(program) => {
                let strides = shapes.iter().map(|s| broadcast_strides(s, &shape)).collect();
                Some(Prologue { shape: shape.clone(), strides, program: program.clone() })
            }
            None => None,
        };
        let mut reads = self.bufs(&args);
        let mut sorted = axes.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        for (i, &axis) in sorted.iter().enumerate() {
            let (outer, len, inner) = around(&shape, axis);
            shape[axis] = 1;
            // Intermediate results get buffers of their own; the last is the output.
            let w = if i + 1 == sorted.len() {
                self.new_buffer(out, Role::Temp)?
            } else {
                self.scratch(Storage::Float, outer * inner, format!("{out}.{i}"))
            };
            let row_cube = self.row_cube(len, inner);
            let plane = self.row_plane(row_cube);
            let kernel = Kernel::Reduce { op, outer, len, inner, prologue: prologue.take(), row_cube, plane };
            self.emit(n, kernel, std::mem::replace(&mut reads, vec![w]), vec![w])?;
        }
        Ok(())
    }
}
