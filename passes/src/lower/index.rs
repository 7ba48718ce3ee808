//! Data-dependent addressing: gather, scatter-add, top-k and one-hot, one launch each.

use calm_ir::{NodeId, Op};

use super::{LowerError, Lowering};
use crate::layout::around;
use crate::plan::{Kernel, Role};

impl Lowering<'_> {
    pub(super) fn lower_index(&mut self, n: NodeId) -> Result<(), LowerError> {
        let node = &self.g.nodes[n];
        let args = &node.args;
        let count = |l: &Self, i: usize| Ok::<u64, LowerError>(l.shape(args[i])?.iter().product());
        let kernel = match &node.op {
            Op::Gather { axis } => {
                let (outer, rows, inner) = around(&self.shape(args[0])?, *axis);
                Kernel::Gather { outer, rows, inner, count: count(self, 1)? }
            }
            Op::ScatterAdd { axis } => {
                let (outer, rows, inner) = around(&self.shape(node.results[0])?, *axis);
                Kernel::ScatterAdd { outer, rows, inner, count: count(self, 1)? }
            }
            Op::TopK { k } => {
                let src = self.shape(args[0])?;
                let cols = *src.last().expect("top-k has rank >= 1");
                Kernel::TopK { rows: src.iter().product::<u64>() / cols, cols, k: *k }
            }
            Op::OneHot { depth, .. } => Kernel::OneHot { count: count(self, 0)?, depth: *depth },
            other => unreachable!("{} is not an indexing op", other.name()),
        };
        let reads = self.bufs(args);
        // Top-k writes its values and indices; the others one result.
        let writes = node.results.iter().map(|&r| self.new_buffer(r, Role::Temp)).collect::<Result<_, _>>()?;
        self.emit(n, kernel, reads, writes)
    }
}
