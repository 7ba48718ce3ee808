//! Every kernel, through lowering and the device executor (Vulkan; lavapipe here), against the
//! reference executor on fresh random inputs of awkward sizes (1, 7, 33, 130: not multiples of
//! any tile). Temporary buffers start as NaN, so an element a kernel does not write fails.

use std::collections::BTreeMap;

use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::FloatDType;
use calm_ir::{shape, Bindings, BuildResult, DType, Graph, GraphBuilder, Op, Shape, ValueId};
use calm_passes::lower::{lower, LowerOptions};
use calm_passes::memory::check_memory;
use calm_passes::plan::{Kernel, SlotId};
use calm_runtime::device::select::catch_device;
use calm_runtime::device::DeviceExecutor;
use calm_runtime::host::{HostData, HostTensor};
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::Reference;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::Runtime;

/// Builds a graph with inputs of the given types, runs it on the device and on the reference,
/// and compares every output: each element's error relative to the output's largest magnitude
/// (f32 rounding is relative to the scale of the computation, not of each element) at most `tol`.
fn check(
    inputs: &[(&str, DType, Shape)],
    tol: f64,
    build: impl FnOnce(&mut GraphBuilder, &[ValueId]) -> BuildResult<Vec<ValueId>>,
) -> Graph {
    let mut b = GraphBuilder::new("t");
    let ids: Vec<ValueId> = inputs.iter().map(|(n, t, s)| b.input(n, *t, s.clone()).unwrap()).collect();
    let outs = build(&mut b, &ids).unwrap();
    for (i, &o) in outs.iter().enumerate() {
        b.output(&format!("out{i}"), o);
    }
    let g = b.finish().unwrap();
    let feeds = random_inputs(&g, &Bindings::new(), 17).unwrap();
    compare(&g, &feeds, tol);
    g
}

fn compare(g: &Graph, feeds: &BTreeMap<String, HostTensor>, tol: f64) {
    compare_with(g, feeds, tol, &LowerOptions::default());
}

fn compare_with(g: &Graph, feeds: &BTreeMap<String, HostTensor>, tol: f64, opts: &LowerOptions) {
    let params = ParamStore::init(g, 3);
    let want = Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(g, &params, feeds).unwrap();
    let bindings = calm_runtime::reference::bind_inputs(g, feeds).unwrap();
    let plan = lower(g, &bindings, opts).unwrap();
    check_memory(&plan).unwrap();
    let client = WgpuRuntime::client(&WgpuDevice::default());
    let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(client, plan);
    exec.poison();
    exec.load_params(&params).unwrap();
    let got = exec.run(feeds).unwrap();
    for (name, w) in &want {
        let gt = &got[name];
        assert_eq!(gt.shape, w.shape, "{name}");
        match (&w.data, &gt.data) {
            (HostData::I32(a), HostData::I32(b)) => assert_eq!(a, b, "{name}"),
            (HostData::Bool(a), HostData::Bool(b)) => assert_eq!(a, b, "{name}"),
            _ => {
                let (w, gv) = (w.data.to_f64(), gt.data.to_f64());
                let scale = w.iter().filter(|x| x.is_finite()).fold(1e-30f64, |m, x| m.max(x.abs()));
                for (i, (a, b)) in w.iter().zip(&gv).enumerate() {
                    let same_special = (a.is_nan() && b.is_nan()) || (a.is_infinite() && a == b);
                    let err = (a - b).abs() / scale;
                    assert!(
                        same_special || err <= tol,
                        "{name}[{i}]: device {b}, reference {a} (relative error {err:.2e})"
                    );
                }
            }
        }
    }
}

const F: DType = DType::F32;

#[test]
fn elementwise_chains_broadcasts_casts_and_selects() {
    check(&[("a", F, shape![7u64, 33u64]), ("b", F, shape![33u64]), ("c", F, shape![7u64, 1u64])], 1e-5, |b, x| {
        let e = b.tanh(x[0])?;
        let s = b.sigmoid(x[1])?;
        let m = b.mul(e, s)?;
        let d = b.div(m, x[2])?;
        let g = b.gelu(d)?;
        let r = b.relu(x[0])?;
        let mx = b.max(g, r)?;
        let zero = b.scalar(0.0)?;
        let lt = b.less(x[0], zero)?;
        let neg_inf = b.scalar(f64::NEG_INFINITY)?;
        let sel = b.select(lt, neg_inf, mx)?;
        let abs = b_abs(b, x[1])?;
        let ab = b.sqrt(abs)?;
        let i = b.cast(x[0], DType::I32)?;
        Ok(vec![sel, ab, i, lt])
    });
}

fn b_abs(b: &mut GraphBuilder, x: ValueId) -> BuildResult<ValueId> {
    let n = b.neg(x)?;
    b.max(x, n)
}

#[test]
fn matmuls_of_awkward_sizes_transposes_and_batches() {
    for (m, k, n) in [(1u64, 1u64, 1u64), (7, 33, 130), (130, 7, 33), (33, 130, 7)] {
        check(&[("a", F, shape![m, k]), ("w", F, shape![n, k])], 1e-5, |b, x| {
            Ok(vec![b.matmul(x[0], x[1], false, true)?])
        });
        check(&[("a", F, shape![k, m]), ("w", F, shape![k, n])], 1e-5, |b, x| {
            Ok(vec![b.matmul(x[0], x[1], true, false)?])
        });
    }
    // Batched with broadcast batch dimensions: [3,1,7,33] x [5,33,13] -> [3,5,7,13].
    check(&[("a", F, shape![3u64, 1u64, 7u64, 33u64]), ("b", F, shape![5u64, 33u64, 13u64])], 1e-5, |b, x| {
        Ok(vec![b.matmul(x[0], x[1], false, false)?])
    });
    // The linear layer's form: [2,7,33] x [130,33]ᵀ.
    check(&[("a", F, shape![2u64, 7u64, 33u64]), ("w", F, shape![130u64, 33u64])], 1e-5, |b, x| {
        Ok(vec![b.matmul(x[0], x[1], false, true)?])
    });
}

/// A graph computing `x · Wᵀ + b` and a residual, with `W` a parameter (stored transposed) and
/// every GEMM variant: shared tiles, registers, vectors of 16, 8 and 4 columns.
#[test]
fn every_gemm_variant_with_weights_epilogues_and_batches() {
    use calm_passes::compile::fusion_passes;
    use calm_passes::lower::GemmStrategy;
    use calm_passes::pipeline::Pipeline;
    use calm_passes::plan::{Gemm, GemmTile, Kernel};
    // The last is large enough for the GPU's default 64 × 64 tile; the others take the small
    // tile there (too few default tiles to fill a GPU).
    for (rows, k, n) in [(7u64, 36u64, 48u64), (130, 12, 40), (1, 4, 36), (33, 33, 130), (770, 33, 705)] {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", F, shape![2u64, rows, k]).unwrap();
        let r = b.input("r", F, shape![2u64, rows, n]).unwrap();
        let y = calm_ir::nn::linear(&mut b, "lin", x, n).unwrap();
        let y = b.gelu(y).unwrap();
        let y = b.add(y, r).unwrap();
        let z = b.input("z", F, shape![2u64, k, n]).unwrap();
        let p = b.matmul(x, z, false, false).unwrap();
        // A row per batch entry in the epilogue: that GEMM keeps its batch.
        let c = b.input("c", F, shape![2u64, 1u64, n]).unwrap();
        let q = calm_ir::nn::linear(&mut b, "lin2", x, n).unwrap();
        let q = b.add(q, c).unwrap();
        b.output("y", y);
        b.output("p", p);
        b.output("q", q);
        let mut g = b.finish().unwrap();
        Pipeline::new(fusion_passes()).run(&mut g).unwrap();
        let feeds = random_inputs(&g, &Bindings::new(), 5).unwrap();
        for gemm in [GemmStrategy::Registers, GemmStrategy::SharedTiles(GemmTile::DEFAULT)] {
            let opts = LowerOptions { gemm, ..LowerOptions::default() };
            let plan = lower(&g, &Bindings::new(), &opts).unwrap();
            let variants: Vec<Gemm> = plan
                .launches
                .values()
                .filter_map(|l| match &l.kernel {
                    Kernel::MatMul { gemm, .. } => Some(*gemm),
                    _ => None,
                })
                .collect();
            if gemm == GemmStrategy::Registers && n % 4 == 0 && k % 4 == 0 {
                assert!(variants.iter().all(|v| matches!(v, Gemm::Vectors { .. })), "{variants:?}");
            }
            if gemm != GemmStrategy::Registers {
                let tile = if rows == 770 { GemmTile::DEFAULT } else { GemmTile::SMALL };
                assert!(variants.iter().all(|v| *v == Gemm::SharedTiles(tile)), "{variants:?}");
            }
            compare_with(&g, &feeds, 1e-5, &opts);
        }
    }
}

#[test]
fn elementwise_ops_read_slices_where_they_lie() {
    // A last-axis slice read only by elementwise ops is a view into its argument: rank 3
    // broadcast against a bias, rank 3 into a higher-rank output, and rank 1.
    let g = check(
        &[("x", F, shape![3u64, 7u64, 20u64]), ("v", F, shape![33u64]), ("y", F, shape![2u64, 1u64, 1u64, 9u64])],
        1e-6,
        |b, x| {
            let s = b.slice(x[0], -1, 4, 13)?;
            let y = b.exp(x[2])?;
            let t = b.slice(x[1], -1, 5, 30)?;
            Ok(vec![b.add(s, y)?, b.mul(s, s)?, b.neg(t)?])
        },
    );
    let plan = lower(&g, &Bindings::new(), &LowerOptions::default()).unwrap();
    let names: Vec<&str> = plan.launches.values().map(|l| l.kernel.name()).collect();
    assert!(!names.contains(&"copy"), "{names:?}");
    let started = plan.launches.values().filter(|l| l.kernel.reads_from_a_start());
    assert_eq!(started.count(), 3, "{names:?}");
}

/// An elementwise launch writing over an argument it reads from its start while it reads
/// another at a start inside a wider buffer: the memory plan shares the first's slot, and the
/// device agrees with the reference.
#[test]
fn a_launch_reading_a_slice_still_writes_in_place() {
    let g = check(&[("x", F, shape![5u64, 13u64]), ("y", F, shape![5u64, 7u64])], 1e-6, |b, x| {
        let wide = b.exp(x[0])?;
        let part = b.slice(wide, -1, 5, 12)?;
        let t = b.tanh(x[1])?;
        let sum = b.add(part, t)?;
        Ok(vec![b.relu(sum)?])
    });
    let plan = lower(&g, &Bindings::new(), &LowerOptions::default()).unwrap();
    let l =
        plan.launches.values().find(|l| l.kernel.reads_from_a_start()).expect("the add reads its slice where it lies");
    let slots: Vec<SlotId> = l.reads.iter().chain(&l.writes).map(|&b| plan.memory.slot_of[b]).collect();
    assert!(slots[..2].contains(&slots[2]), "the sum shares a slot with an argument: {slots:?}");
}

#[test]
fn gemms_read_a_concatenation_from_its_parts() {
    use calm_passes::compile::fusion_passes;
    use calm_passes::lower::GemmStrategy;
    use calm_passes::pipeline::Pipeline;
    use calm_passes::plan::{Gemm, GemmTile, Kernel};
    // `[x, y]` joined along the last axis (x, y: `[rows.., width]`), read as `A` by a linear
    // with an activation in its epilogue (`h`, `n[0]` wide) and a bare matmul (`p`, `n[1]`),
    // after every fusion pass.
    let two_gemms = |rows: [u64; 2], widths: [u64; 2], n: [u64; 2], gelu: bool| {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", F, shape![rows[0], rows[1], widths[0]]).unwrap();
        let y = b.input("y", F, shape![rows[0], rows[1], widths[1]]).unwrap();
        let xy = b.concat(&[x, y], 2).unwrap();
        let h = calm_ir::nn::linear(&mut b, "lin", xy, n[0]).unwrap();
        let h = if gelu { b.gelu(h) } else { b.relu(h) }.unwrap();
        let w = b.input("w", F, shape![widths[0] + widths[1], n[1]]).unwrap();
        let p = b.matmul(xy, w, false, false).unwrap();
        b.output("h", h);
        b.output("p", p);
        let mut g = b.finish().unwrap();
        Pipeline::new(fusion_passes()).run(&mut g).unwrap();
        g
    };
    // Parts of awkward widths (the split falls inside a k tile), a batch folded into rows, an
    // epilogue (bias, GELU) and two GEMMs reading the one concatenation.
    let g = two_gemms([3, 7], [33, 5], [130, 9], true);
    let feeds = random_inputs(&g, &Bindings::new(), 8).unwrap();
    for (gemm, copies) in [(GemmStrategy::SharedTiles(GemmTile::DEFAULT), 0), (GemmStrategy::Registers, 2)] {
        let opts = LowerOptions { gemm, ..LowerOptions::default() };
        let plan = lower(&g, &Bindings::new(), &opts).unwrap();
        let count = |name: &str| plan.launches.values().filter(|l| l.kernel.name() == name).count();
        assert_eq!(count("copy"), copies, "{gemm:?}");
        let split =
            plan.launches.values().filter(|l| matches!(l.kernel, Kernel::MatMul { a_split: Some(33), .. })).count();
        assert_eq!(split, if copies == 0 { 2 } else { 0 }, "{gemm:?}");
        compare_with(&g, &feeds, 1e-5, &opts);
    }
    // Parts of widths that are multiples of 4: the vector GEMM (lavapipe's) reads them in place
    // too. 45 rows: a tile of 32 rows and one of 13.
    let g = two_gemms([5, 9], [36, 8], [132, 12], false);
    let feeds = random_inputs(&g, &Bindings::new(), 10).unwrap();
    for gemm in [GemmStrategy::Registers, GemmStrategy::SharedTiles(GemmTile::DEFAULT)] {
        let opts = LowerOptions { gemm, ..LowerOptions::default() };
        let plan = lower(&g, &Bindings::new(), &opts).unwrap();
        assert_eq!(plan.launches.values().filter(|l| l.kernel.name() == "copy").count(), 0, "{gemm:?}");
        let split: Vec<&Gemm> = plan
            .launches
            .values()
            .filter_map(|l| match &l.kernel {
                Kernel::MatMul { a_split: Some(36), gemm, .. } => Some(gemm),
                _ => None,
            })
            .collect();
        assert_eq!(split.len(), 2, "{gemm:?}");
        if gemm == GemmStrategy::Registers {
            assert!(split.iter().all(|v| matches!(v, Gemm::Vectors { .. })), "{split:?}");
        }
        compare_with(&g, &feeds, 1e-5, &opts);
    }
    // A concatenation that is also an output is stored.
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", F, shape![7u64, 33u64]).unwrap();
    let y = b.input("y", F, shape![7u64, 5u64]).unwrap();
    let xy = b.concat(&[x, y], 1).unwrap();
    let w = b.input("w", F, shape![38u64, 9u64]).unwrap();
    let p = b.matmul(xy, w, false, false).unwrap();
    b.output("p", p);
    b.output("xy", xy);
    let g = b.finish().unwrap();
    let opts = LowerOptions { gemm: GemmStrategy::SharedTiles(GemmTile::DEFAULT), ..LowerOptions::default() };
    let plan = lower(&g, &Bindings::new(), &opts).unwrap();
    assert_eq!(plan.launches.values().filter(|l| l.kernel.name() == "copy").count(), 2);
    compare_with(&g, &random_inputs(&g, &Bindings::new(), 9).unwrap(), 1e-5, &opts);
}

#[test]
fn row_kernels_softmax_layer_norm_and_reductions() {
    check(&[("x", F, shape![7u64, 33u64, 5u64])], 1e-5, |b, x| {
        Ok(vec![
            b.softmax(x[0], -1)?,
            b.softmax(x[0], 1)?,
            b.log_softmax(x[0], 0)?,
            b.reduce_sum(x[0], &[1], false)?,
            b.reduce_mean(x[0], &[0, 2], true)?,
            b.reduce_max(x[0], &[2], false)?,
        ])
    });
    check(&[("x", F, shape![130u64, 33u64]), ("g", F, shape![33u64]), ("bt", F, shape![33u64])], 1e-5, |b, x| {
        Ok(vec![b.layer_norm_op(x[0], x[1], x[2], 1e-5)?])
    });
}

#[test]
fn row_kernels_with_a_cube_per_row() {
    // Lines shorter than a cube (37 elements, 32 threads), of a few elements per thread with a
    // partial last stride (1001, 256 threads), and with a NaN: each matches the reference,
    // every line of the last axis in a cube of its own.
    let opts = LowerOptions { row_threads: Some(256), ..LowerOptions::default() };
    for (lines, len) in [(7u64, 37u64), (5, 1001)] {
        let mut b = GraphBuilder::new("rows");
        let x = b.input("x", F, shape![lines, len]).unwrap();
        let (gamma, beta) = (b.input("g", F, shape![len]).unwrap(), b.input("bt", F, shape![len]).unwrap());
        let outs = [
            b.softmax(x, -1).unwrap(),
            b.log_softmax(x, 1).unwrap(),
            b.reduce_sum(x, &[1], false).unwrap(),
            b.reduce_mean(x, &[1], true).unwrap(),
            b.reduce_max(x, &[1], false).unwrap(),
            b.layer_norm_op(x, gamma, beta, 1e-5).unwrap(),
        ];
        for (i, o) in outs.into_iter().enumerate() {
            b.output(&format!("out{i}"), o);
        }
        let g = b.finish().unwrap();
        let mut feeds = random_inputs(&g, &Bindings::new(), 19).unwrap();
        compare_with(&g, &feeds, 1e-5, &opts);
        if let HostData::F32(x) = &mut feeds.get_mut("x").unwrap().data {
            x[(len + 3) as usize] = f32::NAN;
        }
        compare_with(&g, &feeds, 1e-5, &opts);
        let plan = lower(&g, &Bindings::new(), &opts).unwrap();
        let threads = if len == 37 { 32 } else { 256 };
        let rows = plan
            .launches
            .values()
            .filter(|l| matches!(l.kernel, Kernel::Softmax { .. } | Kernel::LayerNorm { .. } | Kernel::Reduce { .. }));
        for l in rows {
            assert_eq!(l.kernel.row_cube(), Some(threads), "{}", l.kernel.name());
        }
    }
}

/// A launch given other buffers than its kernel takes (a lowering bug) fails with an error
/// naming the kernel and the counts, not a launch reading the wrong buffers.
#[test]
fn a_launch_with_buffers_its_kernel_does_not_take_is_an_error() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", F, shape![4u64, 6u64]).unwrap();
    let y = b.softmax(x, -1).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let feeds = random_inputs(&g, &Bindings::new(), 5).unwrap();
    let mut plan = lower(&g, &Bindings::new(), &LowerOptions::default()).unwrap();
    let softmax = plan.launches.values_mut().find(|l| l.kernel.name() == "softmax").expect("a softmax launch");
    softmax.reads.push(softmax.reads[0]);
    let client = WgpuRuntime::client(&WgpuDevice::default());
    let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(client, plan);
    let err = catch_device(|| exec.run(&feeds)).expect_err("the launch is refused");
    assert!(
        err.message.contains("softmax launch (reads: 2, writes: 1) does not fit its kernel, which takes x -> out"),
        "{err}"
    );
    // calm's own assertion refused it: reported as calm's bug, not as a device fault.
    assert!(err.in_calm && err.to_string().contains("a bug in calm"), "{err}");
}

#[test]
fn movement_ops() {
    check(&[("x", F, shape![7u64, 1u64, 33u64]), ("y", F, shape![7u64, 5u64, 33u64])], 0.0, |b, x| {
        Ok(vec![
            b.permute(x[1], &[2, 0, 1])?,
            b.broadcast(x[0], shape![2u64, 7u64, 5u64, 33u64])?,
            b.slice(x[1], 2, 3, 30)?,
            b.concat(&[x[0], x[1], x[0]], 1)?,
            b.reshape(x[1], shape![35u64, 33u64])?,
        ])
    });
}

#[test]
fn indexing_ops() {
    check(
        &[("t", F, shape![130u64, 7u64]), ("i", DType::I32, shape![3u64, 11u64]), ("l", DType::I32, shape![33u64])],
        0.0,
        |b, x| {
            let one_hot = b.one_hot(x[2], 7, DType::F32)?;
            let rows = b.gather(x[0], x[1], 0)?;
            let cols = b.gather(x[0], x[2], 1)?;
            let zeros = b.scalar(0.0)?;
            let base = b.broadcast(zeros, shape![7u64, 7u64])?;
            let upd = b.permute(one_hot, &[1, 0])?;
            let hist = b.scatter_add(base, x[2], upd, 1)?;
            Ok(vec![one_hot, rows, cols, hist])
        },
    );
}

/// An index out of range is an error on both executors, naming the input (the kernels alone
/// would read it as row 0).
#[test]
fn indices_out_of_range_are_refused_by_both_executors() {
    let mut b = GraphBuilder::new("t");
    let t = b.input("t", F, shape![5u64, 3u64]).unwrap();
    let i = b.input("culture", DType::I32, shape![4u64]).unwrap();
    let picked = b.gather(t, i, 0).unwrap();
    let hot = b.one_hot(i, 3, F).unwrap();
    b.output("picked", picked);
    b.output("hot", hot);
    let g = b.finish().unwrap();
    let mut feeds = random_inputs(&g, &Bindings::new(), 3).unwrap();
    for (bad, rows) in [(5, "5 rows"), (-1, "5 rows")] {
        feeds.insert("culture".into(), HostTensor::new(vec![4], HostData::I32(vec![0, 4, bad, 1])));
        let reference = Reference::<Flex>::new(FlexDevice, FloatDType::F32).run(&g, &ParamStore::init(&g, 1), &feeds);
        let reference = reference.map(|_| ()).unwrap_err().to_string();
        assert!(reference.contains(&format!("index {bad} is out of range for {rows}")), "{reference}");
        let plan = lower(&g, &Bindings::new(), &LowerOptions::default()).unwrap();
        let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(WgpuRuntime::client(&WgpuDevice::default()), plan);
        let device = exec.run(&feeds).map(|_| ()).unwrap_err().to_string();
        assert!(device.contains(&format!("input `culture`: index {bad} is out of range for {rows}")), "{device}");
    }
    // In range for the gather's 5 rows but not for the one-hot's 3 classes: the one-hot is named.
    feeds.insert("culture".into(), HostTensor::new(vec![4], HostData::I32(vec![0, 4, 2, 1])));
    let reference = Reference::<Flex>::new(FlexDevice, FloatDType::F32).run(&g, &ParamStore::init(&g, 1), &feeds);
    let reference = reference.map(|_| ()).unwrap_err().to_string();
    assert!(reference.contains("index 4 is out of range for one-hot depth 3"), "{reference}");
    let plan = lower(&g, &Bindings::new(), &LowerOptions::default()).unwrap();
    let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(WgpuRuntime::client(&WgpuDevice::default()), plan);
    let device = exec.run(&feeds).map(|_| ()).unwrap_err().to_string();
    assert!(device.contains("index 4 is out of range for 3 classes (one_hot at"), "{device}");
    feeds.insert("culture".into(), HostTensor::new(vec![4], HostData::I32(vec![0, 2, 2, 1])));
    assert!(exec.run(&feeds).is_ok(), "every index in range");
}

#[test]
fn top_k_with_ties_and_nan() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", F, shape![3u64, 7u64]).unwrap();
    let (v1, i1) = b.top_k(x, 1).unwrap();
    let (v3, i3) = b.top_k(x, 3).unwrap();
    for (n, v) in [("v1", v1), ("i1", i1), ("v3", v3), ("i3", i3)] {
        b.output(n, v);
    }
    let g = b.finish().unwrap();
    let values = vec![
        1.0,
        5.0,
        5.0,
        0.0,
        5.0,
        -1.0,
        2.0,
        3.0,
        3.0,
        3.0,
        3.0,
        3.0,
        3.0,
        3.0,
        0.5,
        f32::NAN,
        9.0,
        9.0,
        -2.0,
        0.0,
        1.0,
    ];
    let feeds = [("x".to_string(), HostTensor::f32(vec![3, 7], values))].into();
    compare(&g, &feeds, 0.0);
}

#[test]
fn random_numbers_dropout_and_iota() {
    let mut b = GraphBuilder::new("t");
    b.enable_randomness().unwrap();
    b.set_training(true);
    let x = b.input("x", F, shape![33u64, 130u64]).unwrap();
    let u = b.random_uniform(shape![7u64, 33u64]).unwrap();
    let d = b.dropout(x, 0.3).unwrap();
    let i = b.iota(shape![7u64, 33u64], 1).unwrap();
    for (n, v) in [("u", u), ("d", d), ("i", i)] {
        b.output(n, v);
    }
    let g = b.finish().unwrap();
    let feeds = random_inputs(&g, &Bindings::new(), 99).unwrap();
    // Uniforms and the dropout mask are bit-exact; the kept values round as f32.
    compare(&g, &feeds, 1e-7);
    assert!(g.nodes.values().any(|n| matches!(n.op, Op::Dropout { .. })));
}
