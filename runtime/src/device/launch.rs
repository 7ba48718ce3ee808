//! One plan launch: its kernel's metadata and the call into the kernels crate.

use calm_kernels::attention::{self, AttentionPath, AttentionShapeLaunch};
use calm_kernels::elementwise::{self, Buf};
use calm_kernels::gumbel_pool::{self, PoolConfig};
use calm_kernels::matmul::{self, GemmConfig, GemmShape, LanesConfig, VectorConfig};
use calm_kernels::route::{self, RouteConfig, RouteDispatchConfig};
use calm_kernels::{index, moe, rows};
use calm_passes::plan::{
    long_attention_rows, Gemm, Kernel, Launch, Prologue, Reduction, Storage, ATTENTION_SHORT_KEYS,
};
use cubecl::prelude::*;

use super::convert;
use super::DeviceFloat;

fn u32s(v: &[u64]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// The metadata array a launch reads (shapes and strides), if its kernel takes one.
pub fn meta(kernel: &Kernel) -> Option<Vec<u32>> {
    match kernel {
        Kernel::Elementwise { shape, strides, offsets, .. } => {
            Some(elementwise::meta(&u32s(shape), &strides.iter().map(|s| u32s(s)).collect::<Vec<_>>(), &u32s(offsets)))
        }
        Kernel::Reduce { prologue: Some(Prologue { shape, strides, .. }), .. } => {
            Some(elementwise::meta(&u32s(shape), &strides.iter().map(|s| u32s(s)).collect::<Vec<_>>(), &[]))
        }
        Kernel::Copy { shape, src_strides, src_offset, dst_strides, dst_offset } => {
            let mut m = u32s(shape);
            m.extend(u32s(src_strides));
            m.extend(u32s(dst_strides));
            m.push(*src_offset as u32);
            m.push(*dst_offset as u32);
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
            let extra: Vec<Vec<u32>> =
                epilogue.as_ref().map(|e| e.strides.iter().map(|s| u32s(s)).collect()).unwrap_or_default();
            let shape = GemmShape {
                m: *m as u32,
                n: *n as u32,
                k: *k as u32,
                a: [a_strides[0] as u32, a_strides[1] as u32],
                b: [b_strides[0] as u32, b_strides[1] as u32],
                a_offset: *a_offset as u32,
                batch: u32s(batch),
                a_batch: u32s(a_batch_strides),
                b_batch: u32s(b_batch_strides),
            };
            Some(shape.meta(&extra))
        }
        _ => None,
    }
}

/// A program over a shape of `rank` as the elementwise kernels take it, and its arguments
/// (`reads`) with their kinds.
fn program_args<'a>(
    program: &calm_ir::program::Program,
    rank: usize,
    reads: &'a [(Storage, Buf)],
) -> (elementwise::Program, Vec<(elementwise::Kind, &'a Buf)>) {
    let storages: Vec<Storage> = reads.iter().map(|(s, _)| *s).collect();
    let args = reads.iter().map(|(s, b)| (convert::kind(*s), b)).collect();
    (convert::elementwise(program, rank, &storages), args)
}

fn arg<R: Runtime>(b: &Buf) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(b.handle.clone(), b.len) }
}

/// Enqueues `l` with its buffers (`reads` and `writes` in the kernel's order).
pub fn launch<R: Runtime, F: DeviceFloat>(
    client: &ComputeClient<R>,
    l: &Launch,
    reads: &[(Storage, Buf)],
    writes: &[(Storage, Buf)],
    meta: Option<&Buf>,
) {
    let count = CubeCount::Static(l.cube_count[0], l.cube_count[1], l.cube_count[2]);
    let dim = CubeDim::new_3d(l.cube_dim[0], l.cube_dim[1], l.cube_dim[2]);
    let items = l.kernel.work_items() as u32;
    let meta = || meta.expect("this kernel has metadata");
    match &l.kernel {
        Kernel::Elementwise { shape, program, .. } => {
            let (p, args) = program_args(program, shape.len(), reads);
            let outs: Vec<_> = writes.iter().map(|(s, b)| (convert::kind(*s), b)).collect();
            elementwise::launch::<R, F>(client, &p, &args, &outs, meta(), items, count, dim);
        }
        Kernel::MatMul { batch, gemm, epilogue, grouped, a_split, .. } => {
            let epilogue = epilogue.as_ref().map(|e| (convert::ops(&e.program), e.program.outputs[0].0 as usize));
            // A grouped GEMM's index buffer is its last read; a plain one reads none (any
            // buffer fills the slot). A split A's second part is its last read, and the kernel
            // finds it after the epilogue arguments.
            let (extras, index) = match grouped {
                Some(_) => (&reads[2..reads.len() - 1], &reads[reads.len() - 1].1),
                None => (&reads[2..], meta()),
            };
            let a_tail = a_split.map(|split| (split as u32, extras.len() - 1));
            assert!(
                a_tail.is_none() || !matches!(gemm, Gemm::Registers { .. }),
                "the lowering splits A for shared-tile and vector GEMMs only"
            );
            assert!(
                !matches!(gemm, Gemm::Vectors { .. })
                    || a_tail.is_none_or(|(split, _)| split % 4 == 0 && batch.is_empty()),
                "the vector GEMM reads a split A's first part 4 columns at a time, without a batch"
            );
            assert!(
                grouped.as_ref().is_none_or(|g| g.fold_experts.is_none()) || matches!(gemm, Gemm::Vectors { .. }),
                "the lowering folds grouped rows for vector GEMMs only"
            );
            let batch = convert::batching(batch.len(), grouped.as_ref());
            let mut extra = SequenceArg::new();
            for (_, b) in extras {
                extra.push(arg::<R>(b));
            }
            let (a, b, c, m, index) = (&reads[0].1, &reads[1].1, &writes[0].1, arg(meta()), arg(index));
            // The kernels read in bounds by construction (checked by the plan's shapes), so they
            // are launched without per-access bounds checks.
            unsafe {
                match *gemm {
                    Gemm::SharedTiles(t) => {
                        let cfg = GemmConfig {
                            tile_m: t.tile_m,
                            tile_n: t.tile_n,
                            tile_k: t.tile_k,
                            thread_m: t.thread_m,
                            thread_n: t.thread_n,
                            batch,
                            epilogue,
                            a_tail,
                        };
                        matmul::matmul::launch_unchecked::<F, R>(
                            client,
                            count,
                            dim,
                            arg(a),
                            arg(b),
                            extra,
                            arg(c),
                            m,
                            index,
                            cfg,
                        )
                    }
                    Gemm::Registers { rows, cols, .. } => {
                        let cfg = LanesConfig { rows, cols, batch, epilogue };
                        matmul::matmul_lanes::launch_unchecked::<F, R>(
                            client,
                            count,
                            dim,
                            arg(a),
                            arg(b),
                            extra,
                            arg(c),
                            m,
                            index,
                            cfg,
                        )
                    }
                    Gemm::Vectors { rows, width, .. } => {
                        let w = width as usize;
                        let fold_experts = grouped.as_ref().and_then(|g| g.fold_experts);
                        let cfg = VectorConfig { rows, batch, epilogue, fold_experts, a_tail };
                        let vec_arg =
                            |x: &Buf, width: usize| ArrayArg::<R>::from_raw_parts(x.handle.clone(), x.len / width);
                        matmul::matmul_vector::launch_unchecked::<F, R>(
                            client,
                            count,
                            dim,
                            w,
                            vec_arg(a, 4),
                            vec_arg(b, w),
                            extra,
                            vec_arg(c, w),
                            m,
                            index,
                            cfg,
                        )
                    }
                }
            }
        }
        Kernel::Softmax { outer, len, inner, log } => {
            rows::softmax::launch::<F, R>(
                client,
                count,
                dim,
                arg(&reads[0].1),
                arg(&writes[0].1),
                *outer as u32,
                *len as u32,
                *inner as u32,
                *log,
            );
        }
        Kernel::LayerNorm { rows: r, cols, eps, grouped } => {
            let (x, g, b) = (&reads[0].1, &reads[1].1, &reads[2].1);
            // Grouped norms read the index buffer; plain ones none (any buffer fills the slot).
            let index = reads.get(3).map_or(x, |(_, i)| i);
            let grouped = grouped.map(|gr| rows::GroupedRows { tokens: gr.tokens as u32, gather: gr.gather });
            rows::layer_norm::launch::<F, R>(
                client,
                count,
                dim,
                arg(x),
                arg(g),
                arg(b),
                arg(index),
                arg(&writes[0].1),
                *r as u32,
                *cols as u32,
                *eps as f32,
                grouped,
            );
        }
        Kernel::Dispatch { units, experts, top_k, slots, first, first_expert } => {
            moe::dispatch::launch::<F, R>(
                client,
                count,
                dim,
                arg(&reads[0].1),
                arg(&reads[1].1),
                arg(&writes[0].1),
                arg(&writes[1].1),
                arg(&writes[2].1),
                *units as u32,
                *slots as u32,
                *first as u32,
                *first_expert as u32,
                *experts as u32,
                *top_k as u32,
            );
        }
        Kernel::Combine { units, width, tokens, top_k, groups, first_group, out_stride } => {
            moe::combine::launch::<F, R>(
                client,
                count,
                dim,
                arg(&reads[0].1),
                arg(&reads[1].1),
                arg(&reads[2].1),
                arg(&writes[0].1),
                *units as u32,
                *width as u32,
                *tokens as u32,
                *groups as u32,
                *first_group as u32,
                *out_stride as u32,
                *top_k as u32,
            );
        }
        Kernel::Reduce { op, outer, len, inner, prologue } => {
            let op = match op {
                Reduction::Sum => rows::Reduction::Sum,
                Reduction::Mean => rows::Reduction::Mean,
                Reduction::Max => rows::Reduction::Max,
            };
            let (outer, len, inner) = (*outer as u32, *len as u32, *inner as u32);
            match prologue {
                None => rows::reduce::launch::<F, R>(
                    client,
                    count,
                    dim,
                    arg(&reads[0].1),
                    arg(&writes[0].1),
                    outer,
                    len,
                    inner,
                    op,
                ),
                Some(p) => {
                    let (program, args) = program_args(&p.program, p.shape.len(), reads);
                    let (floats, ints, uints) = elementwise::sequences::<R, F>(&args);
                    rows::reduce_program::launch::<F, R>(
                        client,
                        count,
                        dim,
                        floats,
                        ints,
                        uints,
                        arg(&writes[0].1),
                        arg(meta()),
                        outer,
                        len,
                        inner,
                        program,
                        op,
                    );
                }
            }
        }
        Kernel::Copy { shape, .. } => {
            let (src, dst) = (arg(&reads[0].1), arg(&writes[0].1));
            let rank = shape.len();
            match reads[0].0 {
                Storage::Float => index::copy::launch::<F, R>(client, count, dim, src, dst, arg(meta()), items, rank),
                Storage::I32 => index::copy::launch::<i32, R>(client, count, dim, src, dst, arg(meta()), items, rank),
                Storage::U32 | Storage::Bool => {
                    index::copy::launch::<u32, R>(client, count, dim, src, dst, arg(meta()), items, rank)
                }
            }
        }
        Kernel::Gather { rows: r, inner, count: c, .. } => {
            let (t, i, o) = (arg(&reads[0].1), arg(&reads[1].1), arg(&writes[0].1));
            let (r, inner, c) = (*r as u32, *inner as u32, *c as u32);
            match reads[0].0 {
                Storage::Float => index::gather::launch::<F, R>(client, count, dim, t, i, o, r, inner, c, items),
                Storage::I32 => index::gather::launch::<i32, R>(client, count, dim, t, i, o, r, inner, c, items),
                Storage::U32 | Storage::Bool => {
                    index::gather::launch::<u32, R>(client, count, dim, t, i, o, r, inner, c, items)
                }
            }
        }
        Kernel::ScatterAdd { rows: r, inner, count: c, .. } => {
            let (base, i, u) = (arg(&reads[0].1), arg(&reads[1].1), arg(&reads[2].1));
            index::scatter_add::launch::<F, R>(
                client,
                count,
                dim,
                base,
                i,
                u,
                arg(&writes[0].1),
                *r as u32,
                *inner as u32,
                *c as u32,
                items,
            );
        }
        Kernel::OneHot { depth, .. } => {
            let (i, o) = (arg(&reads[0].1), arg(&writes[0].1));
            match writes[0].0 {
                Storage::Float => index::one_hot::launch::<F, R>(client, count, dim, i, o, *depth as u32, items),
                Storage::I32 => index::one_hot::launch::<i32, R>(client, count, dim, i, o, *depth as u32, items),
                Storage::U32 | Storage::Bool => {
                    index::one_hot::launch::<u32, R>(client, count, dim, i, o, *depth as u32, items)
                }
            }
        }
        Kernel::Attention { batch, q_len, kv_len, heads, head_dim, scale, bias_strides, layout, rows_per_thread } => {
            // Without a bias the kernel reads none; any buffer fills the slot.
            let bias = reads.get(3).unwrap_or(&reads[0]);
            let [bb, bh, bi, bj] = bias_strides.map_or([0; 4], |s| s.map(|x| x as u32));
            let [[qs, qo], [ks, ko], [vs, vo]] = layout.map(|l| l.map(|x| x as u32));
            let shape = AttentionShapeLaunch::new(
                *batch as u32,
                *q_len as u32,
                *kv_len as u32,
                qs,
                qo,
                ks,
                ko,
                vs,
                vo,
                bb,
                bh,
                bi,
                bj,
            );
            // Every read is in bounds by construction (rows and keys past the end are clamped),
            // so the per-access bounds checks are dropped (the experts' 5-key attention took
            // 6.3 ms instead of 9.9 on lavapipe; BENCHMARKS.md).
            unsafe {
                attention::attention::launch_unchecked::<F, R>(
                    client,
                    count,
                    dim,
                    arg(&reads[0].1),
                    arg(&reads[1].1),
                    arg(&reads[2].1),
                    arg(&bias.1),
                    arg(&writes[0].1),
                    shape,
                    *scale as f32,
                    *heads as u32,
                    *head_dim as u32,
                    bias_strides.is_some(),
                    if *kv_len <= ATTENTION_SHORT_KEYS {
                        AttentionPath::Short(*kv_len as u32)
                    } else {
                        AttentionPath::Long(long_attention_rows(*rows_per_thread))
                    },
                )
            };
        }
        Kernel::GumbelPool {
            batch,
            tokens,
            hidden,
            clusters,
            width,
            threads,
            transpose_w,
            temperature,
            noise_stream,
            eps,
            write_assign,
        } => {
            // Optional arguments follow the five tensors: τ, then seed and offset. Absent ones
            // are not read; any buffer of the right kind fills their slots.
            let mut next = 5;
            let tau = if *temperature {
                next += 1;
                &reads[5].1
            } else {
                &reads[0].1
            };
            let (seed, offset) =
                if noise_stream.is_some() { (&reads[next].1, &reads[next + 1].1) } else { (&reads[0].1, &reads[0].1) };
            let cfg = PoolConfig {
                threads: *threads,
                clusters: *clusters as u32,
                width: *width as u32,
                transpose_w: *transpose_w,
                temperature: *temperature,
                noise_stream: *noise_stream,
                write_assign: *write_assign,
            };
            gumbel_pool::gumbel_pool::launch::<F, R>(
                client,
                count,
                dim,
                arg(&reads[0].1),
                arg(&reads[1].1),
                arg(&reads[2].1),
                arg(&reads[3].1),
                arg(&reads[4].1),
                arg(tau),
                arg(seed),
                arg(offset),
                arg(&writes[0].1),
                arg(&writes[1].1),
                *batch as u32,
                *tokens as u32,
                *hidden as u32,
                *eps as f32,
                cfg,
            );
        }
        Kernel::RouteDispatch { units, width, experts, top_k, transpose_w, stats, threads, .. } => {
            let cfg = RouteDispatchConfig {
                experts: *experts as u32,
                top_k: *top_k as u32,
                transpose_w: *transpose_w,
                stats: *stats,
                threads: *threads,
            };
            let w = |i: usize| arg(&writes[i].1);
            route::route_dispatch::launch::<F, R>(
                client,
                count,
                dim,
                arg(&reads[0].1),
                arg(&reads[1].1),
                arg(&reads[2].1),
                w(0),
                w(1),
                w(2),
                w(3),
                w(4),
                w(5),
                w(6),
                *units as u32,
                *width as u32,
                cfg,
            );
        }
        Kernel::Route { batch, width, experts, top_k, transpose_w, write_prob, write_chosen } => {
            let cfg = RouteConfig {
                experts: *experts as u32,
                top_k: *top_k as u32,
                transpose_w: *transpose_w,
                write_prob: *write_prob,
                write_chosen: *write_chosen,
            };
            route::route::launch::<F, R>(
                client,
                count,
                dim,
                arg(&reads[0].1),
                arg(&reads[1].1),
                arg(&reads[2].1),
                arg(&writes[0].1),
                arg(&writes[1].1),
                arg(&writes[2].1),
                *batch as u32,
                *width as u32,
                cfg,
            );
        }
        Kernel::TopK { rows: r, cols, k } => {
            let (x, v, i) = (arg(&reads[0].1), arg(&writes[0].1), arg(&writes[1].1));
            index::top_k::launch::<F, R>(client, count, dim, x, v, i, *r as u32, *cols as u32, *k as u32);
        }
    }
}
