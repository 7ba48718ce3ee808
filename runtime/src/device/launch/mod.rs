//! One plan launch: its kernel's metadata and the call into the kernels crate, one module per
//! kernel family as `calm_kernels` has them.

mod attention;
mod elementwise;
mod gumbel_pool;
mod index;
mod matmul;
mod moe;
mod route;
mod rows;

use calm_kernels::elementwise::Buf;
use calm_kernels::matmul::GemmShape;
use calm_passes::plan::{Kernel, Launch, Prologue, Storage};
use cubecl::prelude::*;

use super::DeviceFloat;

/// A size, stride or offset as the kernels take it. The one place the narrowing happens:
/// every plan an executor gets has passed `KernelPlan::check_index_range` (the lowering and
/// `from_json` run it), so a value that does not fit is calm's bug, reported as one.
fn u32_of(x: u64) -> u32 {
    u32::try_from(x).expect("a size that KernelPlan::check_index_range proved fits u32")
}

fn u32s(v: &[u64]) -> Vec<u32> {
    v.iter().map(|&x| u32_of(x)).collect()
}

/// Per-argument strides as the kernels take them.
fn u32s_each(v: &[Vec<u64>]) -> Vec<Vec<u32>> {
    v.iter().map(|s| u32s(s)).collect()
}

/// The metadata array a launch reads (shapes and strides), if its kernel takes one.
pub fn meta(kernel: &Kernel) -> Option<Vec<u32>> {
    match kernel {
        Kernel::Elementwise { shape, strides, offsets, .. } => {
            Some(calm_kernels::elementwise::meta(&u32s(shape), &u32s_each(strides), &u32s(offsets)))
        }
        Kernel::Reduce { prologue: Some(Prologue { shape, strides, .. }), .. } => {
            Some(calm_kernels::elementwise::meta(&u32s(shape), &u32s_each(strides), &[]))
        }
        Kernel::Copy { shape, src_strides, src_offset, dst_strides, dst_offset } => {
            let mut m = u32s(shape);
            m.extend(u32s(src_strides));
            m.extend(u32s(dst_strides));
            m.push(u32_of(*src_offset));
            m.push(u32_of(*dst_offset));
            Some(m)
        }
        Kernel::MatMul {
            batch,
            a_batch_strides,
            b_batch_strides,
            m,
            n,
            k,
            a_strides,
            b_strides,
            a_offset,
            epilogue,
            ..
        } => {
            let extra = epilogue.as_ref().map(|e| u32s_each(&e.strides)).unwrap_or_default();
            let shape = GemmShape {
                m: u32_of(*m),
                n: u32_of(*n),
                k: u32_of(*k),
                a: a_strides.map(u32_of),
                b: b_strides.map(u32_of),
                a_offset: u32_of(*a_offset),
                batch: u32s(batch),
                a_batch: u32s(a_batch_strides),
                b_batch: u32s(b_batch_strides),
            };
            Some(shape.meta(&extra))
        }
        _ => None,
    }
}

/// The kernel argument for a buffer: all of it, as the kernels index it.
fn arg<R: Runtime>(b: &Buf) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(b.handle.clone(), b.len) }
}

/// A launch's reads or writes: each buffer with its storage type.
type Buffers<'a> = &'a [(Storage, Buf)];

/// What every family's launch takes besides its kernel's fields: where it runs, and the
/// launch's buffers in the order the kernel's documentation (`calm_passes::plan::Kernel`) gives.
struct Call<'a, R: Runtime> {
    client: &'a ComputeClient<R>,
    count: CubeCount,
    dim: CubeDim,
    kernel: &'a Kernel,
    reads: Buffers<'a>,
    writes: Buffers<'a>,
    meta: Option<&'a Buf>,
}

impl<'a, R: Runtime> Call<'a, R> {
    /// The reads and the writes, for a family to bind by name with slice patterns.
    fn buffers(&self) -> (Buffers<'a>, Buffers<'a>) {
        (self.reads, self.writes)
    }

    fn meta(&self) -> &'a Buf {
        self.meta.expect("this kernel has metadata")
    }

    /// The kernel's work items (elements, rows) as the kernels bound their threads.
    fn items(&self) -> u32 {
        u32_of(self.kernel.work_items())
    }

    /// The buffer in an optional slot: the one read left (`rest`) when the kernel reads the
    /// slot (`present`), else `placeholder`, which the kernel then leaves alone.
    fn optional(&self, present: bool, rest: Buffers<'a>, placeholder: &'a Buf, takes: &str) -> &'a Buf {
        match (present, rest) {
            (true, [(_, b)]) => b,
            (false, []) => placeholder,
            _ => self.mismatch(takes),
        }
    }

    /// Fails a launch whose buffers are not the ones its kernel `takes` (names: "x, w -> out"):
    /// the lowering broke its own invariant, so there is nothing to recover. A panic, because
    /// launches run inside `catch_device`, which reports it.
    fn mismatch(&self, takes: &str) -> ! {
        panic!(
            "{} launch (reads: {}, writes: {}) does not fit its kernel, which takes {takes}",
            self.kernel.name(),
            self.reads.len(),
            self.writes.len()
        )
    }
}

/// Enqueues `l` with its buffers (`reads` and `writes` in the kernel's order).
pub fn launch<R: Runtime, F: DeviceFloat>(
    client: &ComputeClient<R>,
    l: &Launch,
    reads: &[(Storage, Buf)],
    writes: &[(Storage, Buf)],
    meta: Option<&Buf>,
) {
    let [x, y, z] = l.cube_count;
    let c = Call {
        client,
        count: CubeCount::Static(x, y, z),
        dim: CubeDim::new_3d(l.cube_dim[0], l.cube_dim[1], l.cube_dim[2]),
        kernel: &l.kernel,
        reads,
        writes,
        meta,
    };
    // Each family binds the fields of its kernel from `c.kernel`.
    match l.kernel {
        Kernel::Elementwise { .. } => elementwise::elementwise::<R, F>(c),
        Kernel::MatMul { .. } => matmul::matmul::<R, F>(c),
        Kernel::Softmax { .. } => rows::softmax::<R, F>(c),
        Kernel::LayerNorm { .. } => rows::layer_norm::<R, F>(c),
        Kernel::Reduce { .. } => rows::reduce::<R, F>(c),
        Kernel::Attention { .. } => attention::attention::<R, F>(c),
        Kernel::Copy { .. } => index::copy::<R, F>(c),
        Kernel::Gather { .. } => index::gather::<R, F>(c),
        Kernel::ScatterAdd { .. } => index::scatter_add::<R, F>(c),
        Kernel::OneHot { .. } => index::one_hot::<R, F>(c),
        Kernel::TopK { .. } => index::top_k::<R, F>(c),
        Kernel::Dispatch { .. } => moe::dispatch::<R, F>(c),
        Kernel::Combine { .. } => moe::combine::<R, F>(c),
        Kernel::Route { .. } => route::route::<R, F>(c),
        Kernel::RouteDispatch { .. } => route::route_dispatch::<R, F>(c),
        Kernel::GumbelPool { .. } => gumbel_pool::gumbel_pool::<R, F>(c),
    }
}
