//! Lowering CALM graphs to kernel plans, and the memory planner's guarantees on each.

use calm_ir::{Bindings, DType, GraphBuilder, Op};
use calm_models::{build, CalmConfig, Mode};
use calm_passes::ablate::{ablate, Ablation};
use calm_passes::lower::{lower, LowerError, LowerOptions};
use calm_passes::memory::check_memory;
use calm_passes::plan::{BufferId, Gemm, Kernel, KernelPlan, Role, SlotId};

fn bind(batch: u64, tokens: u64) -> Bindings {
    Bindings::new().with("batch", batch).with("tokens", tokens)
}

/// Every computing node of the graph appears in exactly the launches that compute it, and the
/// memory plan passes the checker.
fn check(g: &calm_ir::Graph, plan: &KernelPlan) {
    check_memory(plan).unwrap_or_else(|e| panic!("{}: {e:?}", g.name));
    for (n, node) in g.nodes.iter() {
        let free = matches!(node.op, Op::Input { .. } | Op::Param { .. } | Op::Reshape { .. });
        let launched = plan.launches.values().any(|l| l.nodes.contains(&n));
        assert_eq!(launched, !free, "{n} ({})", node.op.name());
    }
    assert_eq!(plan.outputs.len(), g.outputs.len());
    assert!(plan.memory.peak_bytes <= plan.memory.naive_bytes);
    for l in plan.launches.values() {
        assert!(l.cube_count.iter().all(|&c| (1..=65_535).contains(&c)), "{:?}", l.cube_count);
    }
}

#[test]
fn calm_graphs_and_every_ablation_lower_with_a_safe_memory_plan() {
    let opts = LowerOptions::default();
    for preset in ["tiny", "paper"] {
        let c = CalmConfig::preset(preset).unwrap();
        for mode in [Mode::Inference, Mode::Training] {
            let g = build(&c, mode).unwrap();
            let plan = lower(&g, &bind(4, 7), &opts).unwrap();
            check(&g, &plan);
            // Activations (not weights or inputs) take less than half their naive memory.
            let temps: Vec<BufferId> =
                plan.buffers.iter().filter(|(_, b)| b.role == Role::Temp).map(|(id, _)| id).collect();
            let naive: u64 = temps.iter().map(|&b| plan.buffer_bytes(b)).sum();
            let slots: std::collections::BTreeSet<SlotId> = temps.iter().map(|&b| plan.memory.slot_of[b]).collect();
            let used: u64 = slots.iter().map(|&s| plan.memory.slots[s].len * 4).sum();
            assert!(used * 2 < naive, "{preset} {mode:?}: activations {used} of naive {naive} bytes");
            if preset == "tiny" {
                for a in Ablation::ALL {
                    let mut h = g.clone();
                    if ablate(&mut h, a).is_ok() {
                        check(&h, &lower(&h, &bind(3, 5), &opts).unwrap());
                    }
                }
            }
        }
    }
}

#[test]
fn elementwise_chains_run_in_place() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", DType::F32, calm_ir::shape![1000u64]).unwrap();
    let y = b.exp(x).unwrap();
    let y = b.tanh(y).unwrap();
    let y = b.relu(y).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let plan = lower(&g, &Bindings::new(), &LowerOptions::default()).unwrap();
    check(&g, &plan);
    // The input keeps its own slot; the three results share one.
    assert_eq!(plan.memory.slots.len(), 2, "{:?}", plan.memory);
    let temps: Vec<SlotId> =
        plan.buffers.iter().filter(|(_, b)| b.role == Role::Temp).map(|(b, _)| plan.memory.slot_of[b]).collect();
    assert!(temps.windows(2).all(|w| w[0] == w[1]));
}

/// An elementwise launch that also reads a slice of a wider buffer (from a start inside it)
/// still writes over an argument it reads element for element from its start.
#[test]
fn a_slice_among_the_arguments_leaves_in_place_writes_to_the_others() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", DType::F32, calm_ir::shape![5u64, 12u64]).unwrap();
    let y = b.input("y", DType::F32, calm_ir::shape![5u64, 4u64]).unwrap();
    let wide = b.exp(x).unwrap();
    let part = b.slice(wide, -1, 4, 8).unwrap();
    let t = b.tanh(y).unwrap();
    let sum = b.add(part, t).unwrap();
    let out = b.relu(sum).unwrap();
    b.output("out", out);
    let g = b.finish().unwrap();
    let plan = lower(&g, &Bindings::new(), &LowerOptions::default()).unwrap();
    check(&g, &plan);
    let l =
        plan.launches.values().find(|l| l.kernel.reads_from_a_start()).expect("the add reads its slice where it lies");
    let Kernel::Elementwise { offsets, .. } = &l.kernel else { unreachable!() };
    let slot = |b: BufferId| plan.memory.slot_of[b];
    let (sliced, whole) = if offsets[0] != 0 { (l.reads[0], l.reads[1]) } else { (l.reads[1], l.reads[0]) };
    assert_eq!(slot(l.writes[0]), slot(whole), "the sum overwrites tanh(y), read from its start");
    assert_ne!(slot(l.writes[0]), slot(sliced), "never the buffer it reads a slice of");
}

#[test]
fn the_checker_catches_buffers_that_overlap() {
    let g = build(&CalmConfig::preset("tiny").unwrap(), Mode::Inference).unwrap();
    let mut plan = lower(&g, &bind(2, 3), &LowerOptions::default()).unwrap();
    // Put a matmul's inputs and output in one slot: all live at that launch.
    let l = plan.launches.iter().find(|(_, l)| matches!(l.kernel, Kernel::MatMul { .. })).unwrap().0;
    let (a, out) = (plan.launches[l].reads[0], plan.launches[l].writes[0]);
    let slot = plan.memory.slot_of[out];
    plan.memory.slot_of[a] = slot;
    plan.memory.slots[slot].len = plan.memory.slots[slot].len.max(plan.buffers[a].len);
    let errors = check_memory(&plan).unwrap_err();
    assert!(errors.iter().any(|e| e.contains("while both are live")), "{errors:?}");
}

#[test]
fn integer_arithmetic_is_refused_with_the_node() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", DType::I32, calm_ir::shape![4u64]).unwrap();
    let y = b.add(x, x).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let e = lower(&g, &Bindings::new(), &LowerOptions::default()).unwrap_err();
    assert!(matches!(e, LowerError::Unsupported { op: "add", .. }), "{e}");
}

/// The plan is the whole contract: written out and read back it is the same plan; a plan of
/// another format, or naming a buffer it does not have, is refused with a reason.
#[test]
fn plans_read_back_as_written_and_old_or_broken_ones_are_refused() {
    let g = build(&CalmConfig::preset("tiny").unwrap(), Mode::Inference).unwrap();
    let plan = lower(&g, &bind(2, 3), &LowerOptions::default()).unwrap();
    let text = plan.to_json();
    assert_eq!(KernelPlan::from_json(&text).unwrap(), plan);
    // Ports carry their IR type, so an executor needs no graph to read the outputs back.
    for (port, o) in plan.outputs.iter().zip(&g.outputs) {
        assert_eq!(port.dtype, g.value_type(o.value).dtype, "{}", port.name);
    }

    let old = text.replacen(calm_passes::plan::PLAN_FORMAT, "calm-plan/1", 1);
    let e = KernelPlan::from_json(&old).unwrap_err().to_string();
    assert!(e.contains("plan format `calm-plan/1`") && e.contains("calm compile --emit plan"), "{e}");

    let mut broken = plan.clone();
    let last = broken.buffers.len();
    broken.launches.values_mut().next().unwrap().writes.push(BufferId::parse(&format!("b{last}")).unwrap());
    let e = KernelPlan::from_json(&broken.to_json()).unwrap_err().to_string();
    assert!(e.contains(&format!("names buffer b{last}, which the plan does not have")), "{e}");

    let mut unsafe_memory = plan.clone();
    let s = unsafe_memory.memory.slots.keys().next().unwrap();
    unsafe_memory.memory.slots[s].len = 0;
    let e = KernelPlan::from_json(&unsafe_memory.to_json()).unwrap_err().to_string();
    assert!(e.starts_with("memory plan: ") && e.contains("does not fit slot s0"), "{e}");

    // Format 2 (before the plan recorded its precision) is refused like 1.
    let two = plan.to_json().replacen("calm-plan/3", "calm-plan/2", 1);
    let e = KernelPlan::from_json(&two).unwrap_err().to_string();
    assert!(e.contains("plan format `calm-plan/2`"), "{e}");

    // A launch whose grid is not its kernel's, and a cube per line that is no power of two.
    let mut regridded = plan.clone();
    regridded.launches.values_mut().next().unwrap().cube_dim = [7, 1, 1];
    let e = KernelPlan::from_json(&regridded.to_json()).unwrap_err().to_string();
    assert!(e.starts_with("launch l0 (") && e.contains("but its kernel needs"), "{e}");
    let gpu = lower(&g, &bind(2, 3), &LowerOptions::gpu()).unwrap();
    let mut odd = gpu.clone();
    let norm = odd.launches.values_mut().find(|l| matches!(l.kernel, Kernel::LayerNorm { .. })).unwrap();
    let Kernel::LayerNorm { row_cube, .. } = &mut norm.kernel else { unreachable!() };
    assert_eq!(*row_cube, Some(32), "the tiny preset's width");
    *row_cube = Some(48);
    norm.cube_dim = [48, 1, 1];
    let e = KernelPlan::from_json(&odd.to_json()).unwrap_err().to_string();
    assert!(e.contains("(layer_norm): a cube per line of 48 threads (not a power of two)"), "{e}");
    assert_eq!(KernelPlan::from_json(&gpu.to_json()).unwrap(), gpu);
    // A GEMM reading A through a layer norm and in two parts.
    let mut split = calm_passes::compile::compile(&g, &bind(2, 3), true, &LowerOptions::gpu()).unwrap().plan;
    let normed = split.launches.values_mut().find(|l| matches!(l.kernel, Kernel::MatMul { a_norm: Some(_), .. }));
    let Kernel::MatMul { a_split, .. } = &mut normed.expect("the experts' second norm is read by its GEMM").kernel
    else {
        unreachable!()
    };
    *a_split = Some(8);
    let e = KernelPlan::from_json(&split.to_json()).unwrap_err().to_string();
    assert!(
        e.contains("(matmul+epilogue): a layer norm of A is read by shared-tile and tensor-core GEMMs only"),
        "{e}"
    );
    // k split in shares by a GEMM with an epilogue.
    let mut shares = calm_passes::compile::compile(&g, &bind(2, 3), true, &LowerOptions::gpu()).unwrap().plan;
    let gemm = shares.launches.values_mut().find(|l| matches!(l.kernel, Kernel::MatMul { epilogue: Some(_), .. }));
    let gemm = gemm.expect("a GEMM with an epilogue");
    let Kernel::MatMul { split_k, batch, .. } = &mut gemm.kernel else { unreachable!() };
    assert!(batch.is_empty());
    *split_k = Some(4);
    (gemm.cube_count, gemm.cube_dim) = gemm.kernel.launch_dims();
    let e = KernelPlan::from_json(&shares.to_json()).unwrap_err().to_string();
    assert!(e.contains("k split in 4 shares needs at least 2, a shared-tile or tensor-core GEMM"), "{e}");
    // A register GEMM told to read A in two parts (only the other variants can).
    let mut lanes = plan.clone();
    let gemm =
        lanes.launches.values_mut().find(|l| matches!(l.kernel, Kernel::MatMul { gemm: Gemm::Registers { .. }, .. }));
    let Kernel::MatMul { a_split, .. } = &mut gemm.expect("lavapipe's plan has a register GEMM").kernel else {
        unreachable!()
    };
    *a_split = Some(4);
    let e = KernelPlan::from_json(&lanes.to_json()).unwrap_err().to_string();
    assert!(e.contains("the register GEMM reads neither A in two parts nor folded expert rows"), "{e}");

    let e = KernelPlan::from_json("{\"format\": \"calm-plan/3\", \"graph\": 3}").unwrap_err().to_string();
    assert!(e.contains("expected a string at line 1 column 36"), "{e}");
}

#[test]
fn attention_over_many_keys_runs_in_tiles_on_gpus_where_they_fit() {
    use calm_passes::compile::compile;
    use calm_passes::plan::ComputeUnit::{Fp32Cores, TensorBf16, TensorTf32};
    use calm_passes::plan::{ComputeUnit, FloatType, Precision};
    // CALM over MiniLM: the encoder's 12 heads of 32 attend over 40 tokens; the head's
    // cross-attention and experts' self-attention over 5 clusters (the short path).
    let cfg = CalmConfig { backbone: calm_models::Backbone::MiniLmL6, ..CalmConfig::preset("paper").unwrap() };
    let g = build(&cfg, Mode::Inference).unwrap();
    let attention = |opts: &LowerOptions| -> (KernelPlan, Vec<(u64, Option<ComputeUnit>)>) {
        let plan = compile(&g, &bind(2, 40), true, opts).unwrap().plan;
        let tiles = plan
            .launches
            .values()
            .filter_map(|l| match l.kernel {
                Kernel::Attention { kv_len, tiles, .. } => Some((kv_len, tiles)),
                _ => None,
            })
            .collect();
        (plan, tiles)
    };
    let sm90 = LowerOptions::sm90();
    for (opts, want) in [
        (LowerOptions::default(), None),
        (LowerOptions::gpu(), Some(Fp32Cores)),
        (LowerOptions { float: FloatType::Bf16, ..sm90.clone() }, Some(TensorBf16)),
        (LowerOptions { precision: Precision::High, ..sm90.clone() }, Some(TensorTf32)),
        (LowerOptions { precision: Precision::Highest, ..sm90.clone() }, Some(Fp32Cores)),
        // f32 tiles of heads of 32 take 43 KiB: not on a device with 32 KiB per cube.
        (LowerOptions { shared_memory: 32 << 10, ..LowerOptions::gpu() }, None),
    ] {
        let (_, got) = attention(&opts);
        assert_eq!(got.iter().filter(|(keys, _)| *keys == 40).count(), 6, "the encoder's six layers: {got:?}");
        for (keys, tiles) in got {
            assert_eq!(tiles, if keys == 40 { want } else { None }, "{opts:?}");
        }
    }
    // A plan file asking for tiles over the short path's keys is refused.
    let (mut plan, _) = attention(&sm90);
    let short = plan.launches.values_mut().find(|l| matches!(l.kernel, Kernel::Attention { kv_len: 5, .. })).unwrap();
    let Kernel::Attention { tiles, .. } = &mut short.kernel else { unreachable!() };
    *tiles = Some(Fp32Cores);
    (short.cube_count, short.cube_dim) = short.kernel.launch_dims();
    let e = KernelPlan::from_json(&plan.to_json()).unwrap_err().to_string();
    assert!(e.contains("(attention): attention in tiles needs more than 16 keys"), "{e}");
}

#[test]
fn cubes_per_row_combine_within_planes_where_the_device_has_them() {
    let g = build(&CalmConfig::preset("paper").unwrap(), Mode::Inference).unwrap();
    // Each launch's cube per line and planes.
    type Rows = Vec<(Option<u32>, Option<u32>)>;
    let rows = |opts: &LowerOptions| -> (KernelPlan, Rows) {
        let plan = lower(&g, &bind(3, 40), opts).unwrap();
        let rows = plan.launches.values().map(|l| (l.kernel.row_cube(), l.kernel.row_plane())).collect();
        (plan, rows)
    };
    // Planes of 32 on Hopper, for every cube per line (all are 32 to 256 wide); none where the
    // device has no planes, and none without a cube per line.
    let (mut plan, got) = rows(&LowerOptions::sm90());
    assert!(got.iter().filter(|(cube, _)| cube.is_some()).count() >= 10, "{got:?}");
    assert!(got.iter().all(|&(cube, plane)| plane == cube.map(|_| 32)), "{got:?}");
    let (_, got) = rows(&LowerOptions::gpu());
    assert!(got.iter().any(|(cube, _)| cube.is_some()) && got.iter().all(|(_, plane)| plane.is_none()), "{got:?}");
    let (_, got) = rows(&LowerOptions { plane_width: Some(32), ..LowerOptions::default() });
    assert!(got.iter().all(|&(cube, plane)| cube.is_none() && plane.is_none()), "{got:?}");
    // A plan file with planes that do not divide the cube is refused.
    let norm = plan.launches.values_mut().find(|l| matches!(l.kernel, Kernel::LayerNorm { .. })).unwrap();
    let Kernel::LayerNorm { plane, .. } = &mut norm.kernel else { unreachable!() };
    *plane = Some(24);
    let e = KernelPlan::from_json(&plan.to_json()).unwrap_err().to_string();
    assert!(e.contains("(layer_norm): planes of 24 units must be a power of two dividing"), "{e}");
}

#[test]
fn gemms_run_on_the_tensor_cores_the_device_has_and_the_precision_allows() {
    use calm_passes::compile::compile;
    use calm_passes::plan::ComputeUnit::{Fp32Cores, TensorBf16, TensorF16, TensorTf32};
    use calm_passes::plan::{ComputeUnit, FloatType, Precision};
    let g = build(&CalmConfig::preset("tiny").unwrap(), Mode::Inference).unwrap();
    let gemms = |opts: &LowerOptions| -> Vec<(ComputeUnit, Gemm, bool)> {
        let plan = compile(&g, &bind(5, 7), true, opts).unwrap().plan;
        let gemms: Vec<_> = plan
            .launches
            .values()
            .filter_map(|l| match &l.kernel {
                Kernel::MatMul { gemm, grouped, .. } => {
                    Some((l.kernel.compute_unit(), *gemm, grouped.as_ref().is_some_and(|g| g.fold_experts.is_some())))
                }
                _ => None,
            })
            .collect();
        assert!(gemms.iter().filter(|g| g.2).count() >= 4, "the experts' grouped GEMMs fold: {gemms:?}");
        gemms
    };
    let sm90 = LowerOptions::sm90();
    // Hopper's units: f32 buffers on TF32 or bf16 tensor cores only where the precision allows,
    // bf16 and f16 buffers on their own type's whatever it says; every GEMM, grouped ones too.
    for (float, precision, want) in [
        (FloatType::F32, Precision::Highest, Fp32Cores),
        (FloatType::F32, Precision::High, TensorTf32),
        (FloatType::F32, Precision::Default, TensorBf16),
        (FloatType::Bf16, Precision::Highest, TensorBf16),
        (FloatType::F16, Precision::High, TensorF16),
    ] {
        let got = gemms(&LowerOptions { float, precision, ..sm90.clone() });
        assert!(got.iter().all(|&(unit, _, _)| unit == want), "{float:?} {precision:?}: {got:?}");
        let tensor = got.iter().all(|(_, gemm, _)| matches!(gemm, Gemm::TensorCores { .. }));
        assert_eq!(tensor, want != Fp32Cores, "{float:?} {precision:?}: {got:?}");
    }
    // What the device lacks runs on the FP32 pipelines: a GPU without tensor cores, one with
    // bf16 products only asked for TF32, and lavapipe's register GEMMs whatever it reported.
    for opts in [
        LowerOptions { float: FloatType::Bf16, ..LowerOptions::gpu() },
        LowerOptions { tensor_units: vec![TensorBf16], precision: Precision::High, ..sm90.clone() },
        LowerOptions { tensor_units: sm90.tensor_units.clone(), precision: Precision::High, ..LowerOptions::default() },
    ] {
        let got = gemms(&opts);
        assert!(
            got.iter().all(|&(unit, gemm, _)| unit == Fp32Cores && !matches!(gemm, Gemm::TensorCores { .. })),
            "{got:?}"
        );
    }
}

/// Every index a launch computes fits the kernels' u32, proven at the plan level: a buffer of
/// 2^32 − 1 elements lowers, one of 2^32 is refused naming its launch (nothing is allocated).
/// A plan file edited to a field over u32 is refused when read.
#[test]
fn launches_whose_indices_overflow_u32_are_refused_naming_the_launch() {
    use calm_ir::shape;
    let lowered = |len: u64| {
        let mut b = GraphBuilder::new("big");
        let x = b.input("x", DType::F32, shape![len]).unwrap();
        let y = b.scoped("act", |b| b.relu(x)).unwrap();
        b.output("y", y);
        lower(&b.finish().unwrap(), &Bindings::new(), &LowerOptions::default())
    };
    let plan = lowered((1 << 32) - 1).expect("2^32 - 1 elements index in u32");
    let e = lowered(1 << 32).unwrap_err().to_string();
    assert!(e.contains("launch l0 (elementwise at big/act)") && e.contains("4294967296 elements"), "{e}");
    // A plan file whose kernel field was edited past u32 is refused, naming the field.
    let mut json: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
    let kernel = &mut json["launches"][0]["kernel"];
    kernel["strides"][0][0] = serde_json::json!(1u64 << 33);
    let e = KernelPlan::from_json(&json.to_string()).unwrap_err().to_string();
    assert!(e.contains("launch l0") && e.contains("`kernel.strides[0][0]` is 8589934592"), "{e}");
}
