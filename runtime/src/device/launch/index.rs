//! Index kernels: copies, gathers, scatter-adds, one-hots and top-k.

use calm_kernels::index as kernels;
use calm_passes::plan::{Kernel, Storage};
use cubecl::prelude::*;

use super::{arg, u32_of, Call};
use crate::device::DeviceFloat;

/// Launches the index kernel `$kernel` for the element type that `$storage` holds: the device
/// float `$F`, i32, or u32 (also for bools). Copies, gathers and one-hots move any values.
macro_rules! by_storage {
    ($storage:expr, $F:ty, $R:ty, $kernel:ident($($arg:expr),* $(,)?)) => {
        match $storage {
            Storage::Float => kernels::$kernel::launch::<$F, $R>($($arg),*),
            Storage::I32 => kernels::$kernel::launch::<i32, $R>($($arg),*),
            Storage::U32 | Storage::Bool => kernels::$kernel::launch::<u32, $R>($($arg),*),
        }
    };
}

pub(super) fn copy<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Copy { ref shape, .. } = *c.kernel else { unreachable!("a copy launch") };
    let rank = shape.len();
    let ([(storage, src)], [(_, dst)]) = c.buffers() else { c.mismatch("src -> dst") };
    let (src, dst, meta, items) = (arg(src), arg(dst), arg(c.meta()), c.items());
    by_storage!(*storage, F, R, copy(c.client, c.count, c.dim, src, dst, meta, items, rank));
}

pub(super) fn gather<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Gather { rows, inner, count, .. } = *c.kernel else { unreachable!("a gather launch") };
    let ([(storage, table), (_, idx)], [(_, out)]) = c.buffers() else { c.mismatch("table, idx -> out") };
    let (table, idx, out, items) = (arg(table), arg(idx), arg(out), c.items());
    let (rows, inner, count) = (u32_of(rows), u32_of(inner), u32_of(count));
    by_storage!(*storage, F, R, gather(c.client, c.count, c.dim, table, idx, out, rows, inner, count, items));
}

pub(super) fn scatter_add<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::ScatterAdd { rows, inner, count, .. } = *c.kernel else { unreachable!("a scatter-add launch") };
    let ([(_, base), (_, idx), (_, upd)], [(_, out)]) = c.buffers() else { c.mismatch("base, idx, upd -> out") };
    let (base, idx, upd, out, items) = (arg(base), arg(idx), arg(upd), arg(out), c.items());
    let (rows, inner, count) = (u32_of(rows), u32_of(inner), u32_of(count));
    kernels::scatter_add::launch::<F, R>(c.client, c.count, c.dim, base, idx, upd, out, rows, inner, count, items);
}

pub(super) fn one_hot<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::OneHot { depth, .. } = *c.kernel else { unreachable!("a one-hot launch") };
    let ([(_, idx)], [(storage, out)]) = c.buffers() else { c.mismatch("idx -> out") };
    let (idx, out, items) = (arg(idx), arg(out), c.items());
    by_storage!(*storage, F, R, one_hot(c.client, c.count, c.dim, idx, out, u32_of(depth), items));
}

pub(super) fn top_k<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::TopK { rows, cols, k } = *c.kernel else { unreachable!("a top-k launch") };
    let ([(_, x)], [(_, values), (_, indices)]) = c.buffers() else { c.mismatch("x -> values, indices") };
    let (x, values, indices) = (arg(x), arg(values), arg(indices));
    kernels::top_k::launch::<F, R>(c.client, c.count, c.dim, x, values, indices, u32_of(rows), u32_of(cols), u32_of(k));
}
