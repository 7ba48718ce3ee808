//! Multi-head attention.

use calm_kernels::attention::{self as kernels, AttentionPath, AttentionShapeLaunch};
use calm_kernels::attention_tiles::{self as tiled, TileProducts};
use calm_passes::plan::{long_attention_rows, ComputeUnit, Gemm, Kernel, ATTENTION_SHORT_KEYS};
use cubecl::prelude::*;

// The plan sizes the tiled kernel's launch; the kernel is written for the same tile.
const _: () = assert!(
    tiled::QUERY_TILE == calm_passes::plan::ATTENTION_QUERY_TILE
        && 32 * tiled::TILE_PLANES == calm_passes::plan::ATTENTION_TILE_THREADS
);

use super::{arg, u32_of, Call};
use crate::device::DeviceFloat;

pub(super) fn attention<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Attention {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
        scale,
        bias_strides,
        layout,
        rows_per_thread,
        tiles,
    } = *c.kernel
    else {
        unreachable!("an attention launch")
    };
    let takes = "q, k, v (and the bias if it has bias strides) -> out";
    let ([(_, q), (_, k), (_, v), rest @ ..], [(_, out)]) = c.buffers() else { c.mismatch(takes) };
    let bias = c.optional(bias_strides.is_some(), rest, q, takes);
    let [bb, bh, bi, bj] = bias_strides.map_or([0; 4], |s| s.map(u32_of));
    let [[qs, qo], [ks, ko], [vs, vo]] = layout.map(|l| l.map(u32_of));
    let (b, q_rows, kv_rows) = (u32_of(batch), u32_of(q_len), u32_of(kv_len));
    let shape = AttentionShapeLaunch::new(b, q_rows, kv_rows, qs, qo, ks, ko, vs, vo, bb, bh, bi, bj);
    if let Some(unit) = tiles {
        assert!(
            kv_len > ATTENTION_SHORT_KEYS && head_dim % 16 == 0,
            "the lowering tiles attention over long keys in heads of a multiple of 16"
        );
        let (heads, head_dim, has_bias) = (u32_of(heads), u32_of(head_dim), bias_strides.is_some());
        let (client, count, dim, scale) = (c.client, c.count, c.dim, scale as f32);
        let (q, k, v, bias, out) = (arg(q), arg(k), arg(v), arg(bias), arg(out));
        let products = match unit {
            ComputeUnit::Fp32Cores => TileProducts::Scalar,
            unit => TileProducts::Tensor { mma_k: Gemm::mma_k(unit) },
        };
        // Reads are clamped in bounds as in the one-row-per-thread kernel below.
        unsafe {
            match unit {
                ComputeUnit::Fp32Cores => tiled::attention_tiles::launch_unchecked::<F, F, R>(
                    client, count, dim, q, k, v, bias, out, shape, scale, heads, head_dim, has_bias, products,
                ),
                ComputeUnit::TensorF16 => tiled::attention_tiles::launch_unchecked::<F, half::f16, R>(
                    client, count, dim, q, k, v, bias, out, shape, scale, heads, head_dim, has_bias, products,
                ),
                ComputeUnit::TensorTf32 => tiled::attention_tiles::launch_unchecked::<F, tf32, R>(
                    client, count, dim, q, k, v, bias, out, shape, scale, heads, head_dim, has_bias, products,
                ),
                ComputeUnit::TensorBf16 => tiled::attention_tiles::launch_unchecked::<F, half::bf16, R>(
                    client, count, dim, q, k, v, bias, out, shape, scale, heads, head_dim, has_bias, products,
                ),
            }
        };
        return;
    }
    let path = if kv_len <= ATTENTION_SHORT_KEYS {
        AttentionPath::Short(kv_rows)
    } else {
        AttentionPath::Long(long_attention_rows(rows_per_thread))
    };
    // Every read is in bounds by construction (rows and keys past the end are clamped), so the
    // per-access bounds checks are dropped (the experts' 5-key attention took 6.3 ms instead of
    // 9.9 on lavapipe; BENCHMARKS.md).
    unsafe {
        kernels::attention::launch_unchecked::<F, R>(
            c.client,
            c.count,
            c.dim,
            arg(q),
            arg(k),
            arg(v),
            arg(bias),
            arg(out),
            shape,
            scale as f32,
            u32_of(heads),
            u32_of(head_dim),
            bias_strides.is_some(),
            path,
        )
    };
}
