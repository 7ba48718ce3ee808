//! The profiler: its FLOP and byte counts against hand-computed values for a GEMM and each
//! fused kernel, device timing, the modelled roofline time, the trace; and the CUDA target:
//! every launch's kernel as CUDA C++ and, where NVRTC is installed, compiled for sm_90.

use calm_ir::entity::EntityId;
use calm_ir::{nn, shape, Bindings, DType, GraphBuilder};
use calm_models::{build, CalmConfig, Mode};
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use calm_passes::plan::{ComputeUnit, FloatType, Kernel, LaunchId, Precision};
use calm_runtime::cuda_target::cuda_sources;
use calm_runtime::cuda_target::nvrtc::{Nvrtc, Toolkit};
use calm_runtime::device::DeviceExecutor;
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::profile::{self, Ceilings, DeviceModel, LaunchProfile};
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::Runtime;

/// Profiles `g` on lavapipe (one timed round): one profile per launch.
fn profiled(g: &calm_ir::Graph, bindings: &Bindings) -> Vec<LaunchProfile> {
    let plan = compile(g, bindings, true, &LowerOptions::default()).unwrap().plan;
    let client = WgpuRuntime::client(&WgpuDevice::default());
    let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(client, plan);
    exec.load_params(&ParamStore::init(g, 1)).unwrap();
    exec.run(&random_inputs(g, bindings, 1).unwrap()).unwrap();
    let (launches, _) = profile::profile_plan(&exec, 1, None).unwrap();
    assert_eq!(launches.len(), exec.plan().launches.len());
    for l in &launches {
        assert!(l.seconds > 0.0 && l.min_seconds <= l.seconds, "launch {} ({}) timed {l:?}", l.index, l.kernel);
    }
    launches
}

fn find<'a>(launches: &'a [LaunchProfile], kernel: &str, scope: &str) -> &'a LaunchProfile {
    launches
        .iter()
        .find(|l| l.kernel == kernel && l.scope.starts_with(scope))
        .unwrap_or_else(|| panic!("no `{kernel}` launch at {scope}"))
}

#[test]
fn gemm_counts_are_the_hand_values() {
    let (m, k, n) = (7u64, 33u64, 130u64);
    let mut b = GraphBuilder::new("gemm");
    let x = b.input("x", DType::F32, shape![m, k]).unwrap();
    let y = nn::linear(&mut b, "lin", x, n).unwrap();
    let y = b.relu(y).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let launches = profiled(&g, &Bindings::new());
    assert_eq!(launches.len(), 1, "one fused matmul + bias + relu");
    let l = &launches[0];
    // 2mkn for the product, then per output a bias add and a max with 0.
    assert_eq!(l.flops, 2 * m * k * n + 2 * m * n);
    // x, W and b read once, y written once, 4 bytes each.
    assert_eq!(l.bytes, 4 * (m * k + k * n + n + m * n));
    let c = Ceilings::fp32(1e9, 1e9);
    assert_eq!(l.unit, ComputeUnit::Fp32Cores, "calm's GEMMs run on the FP32 pipelines");
    assert!((l.share_of_peak(&c) - c.floor_seconds(l.unit, l.flops, l.bytes) / l.seconds).abs() < 1e-12);
}

#[test]
fn fused_kernel_counts_are_the_hand_values() {
    let c = CalmConfig::preset("tiny").unwrap();
    let g = build(&c, Mode::Inference).unwrap();
    let (b, t) = (3u64, 5u64);
    let launches = profiled(&g, &"batch=3,tokens=5".parse().unwrap());
    let (d, h, kk, heads) = (c.width, c.cluster_hidden, c.clusters, c.heads);

    // Gumbel pool: per assignment element (b·t·K) the logit (2h), noise, softmax and mask (11)
    // and its share of the pooled sums (2d). Reads the hidden layer, W, b, the stream X, the
    // mask and the key; writes the pooled clusters and the assignment (an output).
    let pool = find(&launches, "gumbel_pool", "calm/identity_pool/cluster_l");
    assert_eq!(pool.flops, b * t * kk * (2 * h + 2 * d + 11));
    assert_eq!(pool.bytes, 4 * (b * t * h + h * kk + kk + b * t * d + b * t + 1) + 4 * (b * kk * d + b * t * kk));

    // Cross-attention, K explicit clusters attending to K latent ones: per query row (b·K) and
    // key (K), scores and weighted values (4d) and the softmax (5 per head); q, k, v read.
    let att = find(&launches, "attention", "calm/identity_pool/cross_attention");
    assert_eq!(att.flops, b * kk * kk * (4 * d + 5 * heads));
    assert_eq!(att.bytes, 4 * (3 * b * kk * d) + 4 * (b * kk * d));

    // Routing of every dimension's units (b of them) over E experts, in one launch: logits
    // (2d per probability), softmax (5) and top-k (k); reads z and the D routers' W and b;
    // writes each (unit, choice)'s expert and gate (scratch), the index buffer (each slot's
    // expert and unit, then the D·E + 1 expert starts), each slot's gate and each (unit,
    // choice)'s slot, and two one-element placeholders (no statistics in inference).
    let (e, top_k, dims) = (c.experts, c.top_k, c.dimensions);
    let slots = b * dims * top_k;
    let route = find(&launches, "route_dispatch", "calm/moe");
    assert_eq!(route.flops, dims * b * e * (2 * d + 5 + top_k));
    assert_eq!(
        route.bytes,
        4 * (b * d + dims * d * e + dims * e) + 4 * (2 * slots + (2 * slots + dims * e + 1) + 2 * slots + 2)
    );

    // The combine: per slot its K tokens' mean and the gate (K + 2 per element).
    let combine = find(&launches, "combine", "calm/moe");
    assert_eq!(combine.flops, slots * (kk + 2) * d);

    // The experts' first grouped GEMM (q, k, v of every routed unit's K tokens at once): one
    // unit slot per (unit, dimension, choice), each a K × d by d × 3d product.
    let qkv = find(&launches, "matmul+epilogue", "calm/moe");
    assert_eq!(qkv.flops, 2 * kk * d * (3 * d) * slots);
}

fn square_gemm(n: u64, float: FloatType) -> calm_passes::plan::KernelPlan {
    let mut b = GraphBuilder::new("gemm");
    let x = b.input("x", DType::F32, shape![n, n]).unwrap();
    let y = nn::linear(&mut b, "lin", x, n).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let opts = LowerOptions { float, ..LowerOptions::gpu() };
    compile(&g, &Bindings::new(), true, &opts).unwrap().plan
}

#[test]
fn the_h200_model_reads_each_launch_against_its_units_ceiling() {
    let h200 = DeviceModel::h200().ceilings();
    // 4096³ + bias in f32 on the FP32 pipelines: 1.37e11 FLOPs at 67 TFLOP/s = 2.05 ms, far
    // above its 201 MB at 4.3 TB/s (47 µs); plus 3 µs to launch.
    let n = 4096u64;
    let plan = square_gemm(n, FloatType::F32);
    let flops = 2 * n * n * n + n * n;
    let bytes = 4 * (3 * n * n + n);
    let first = &plan.launches[LaunchId::new(0)];
    assert_eq!((first.cost.flops, first.cost.bytes_read + first.cost.bytes_written), (flops, bytes));
    assert_eq!(first.kernel.compute_unit(), ComputeUnit::Fp32Cores);
    let t = h200.modelled_plan(&plan);
    let want = flops as f64 / 67e12 + 3e-6;
    assert!((t[0] - want).abs() < 1e-12, "{} vs {want}", t[0]);
    assert!((t[0] - 2.0542e-3).abs() < 1e-6, "{}", t[0]);
    assert_eq!(h200.bound(ComputeUnit::Fp32Cores, flops, bytes), profile::Bound::Compute);

    // The same GEMM on bf16 tensor cores with bf16 buffers: 174 µs at 790 TFLOP/s, 100 MB at
    // 4.3 TB/s = 23 µs; still compute-bound, plus 3 µs.
    let bf16_bytes = 2 * (3 * n * n + n);
    let tensor = h200.modelled_seconds(ComputeUnit::TensorBf16, flops, bf16_bytes);
    assert!((tensor - (flops as f64 / 790e12 + 3e-6)).abs() < 1e-12, "{tensor}");
    assert!((tensor - 177.0e-6).abs() < 1e-6, "{tensor}");

    // A ReLU over 64 Mi f32 elements: 2 FLOPs... none to speak of, 512 MiB moved at 4.3 TB/s.
    let elements = 64u64 << 20;
    let relu_bytes = 2 * 4 * elements;
    let memory = h200.modelled_seconds(ComputeUnit::Fp32Cores, elements, relu_bytes);
    assert!((memory - (relu_bytes as f64 / 4.3e12 + 3e-6)).abs() < 1e-12, "{memory}");
    assert!((memory - 127.8e-6).abs() < 0.1e-6, "{memory}");
    assert_eq!(h200.bound(ComputeUnit::Fp32Cores, elements, relu_bytes), profile::Bound::Memory);
}

#[test]
fn the_h200_models_constants_each_have_a_source_and_a_date() {
    let model = DeviceModel::h200();
    assert_eq!(model.constants.len(), 6, "FP32, three tensor-core types, memory, launch");
    for row in &model.constants {
        assert!(row.value > 0.0 && !row.source.is_empty(), "{row:?}");
        assert_eq!(row.date.len(), 10, "{row:?}: a YYYY-MM-DD date");
    }
}

#[test]
fn the_trace_names_every_launch() {
    let c = CalmConfig::preset("tiny").unwrap();
    let g = build(&c, Mode::Inference).unwrap();
    let launches = profiled(&g, &"batch=2,tokens=3".parse().unwrap());
    let ceilings = Ceilings::fp32(50e9, 20e9);
    let trace = profile::chrome_trace("lavapipe", calm_runtime::device::Timer::Device, &launches, &ceilings);
    let text = serde_json::to_string(&trace).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let events: Vec<&serde_json::Value> =
        parsed["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(events.len(), launches.len());
    let mut end = 0.0;
    for (e, l) in events.iter().zip(&launches) {
        assert_eq!(e["name"], format!("{} {}", l.kernel, l.scope));
        assert_eq!(e["args"]["launch"], l.index);
        // Back to back, in plan order.
        assert!((e["ts"].as_f64().unwrap() - end).abs() < 1e-6);
        end += e["dur"].as_f64().unwrap();
    }
    let plan = compile(&g, &"batch=2,tokens=3".parse().unwrap(), true, &LowerOptions::default()).unwrap().plan;
    let keys = profile::launch_keys(&plan).into_iter().zip(&launches);
    let groups = profile::group(keys.map(|(k, l)| (k, l.seconds, l.modelled_seconds(&ceilings))));
    assert_eq!(groups.iter().map(|g| g.launches).sum::<usize>(), launches.len());
    let svg = profile::roofline_svg("tiny", &groups, &ceilings);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // A point per group with FLOPs, and one legend mark per kernel among them.
    let plotted: Vec<_> = groups.iter().filter(|g| g.flops > 0 && g.bytes > 0).collect();
    let mut kernels: Vec<&str> = plotted.iter().map(|g| g.kernel.as_str()).collect();
    kernels.sort();
    kernels.dedup();
    assert_eq!(svg.matches("<circle").count(), plotted.len() + kernels.len());
}

fn paper_plan(float: FloatType) -> calm_passes::plan::KernelPlan {
    paper_plan_for(&LowerOptions { float, ..LowerOptions::gpu() }, "batch=3,tokens=7")
}

fn paper_plan_for(opts: &LowerOptions, bind: &str) -> calm_passes::plan::KernelPlan {
    let g = build(&CalmConfig::preset("paper").unwrap(), Mode::Inference).unwrap();
    compile(&g, &bind.parse().unwrap(), true, opts).unwrap().plan
}

#[test]
fn every_launch_of_the_paper_plan_has_cuda_source() {
    for float in [FloatType::F32, FloatType::Bf16] {
        let plan = paper_plan(float);
        let kernels = cuda_sources(&plan).unwrap();
        let mut covered: Vec<usize> = kernels.iter().flat_map(|k| k.launches.clone()).collect();
        covered.sort();
        assert_eq!(covered, (0..plan.launches.len()).collect::<Vec<_>>(), "each launch exactly once");
        for k in &kernels {
            assert!(
                k.source.contains("extern \"C\" __global__ void") && k.source.contains(&format!("{} (", k.entry)),
                "{}: not a CUDA kernel:\n{}",
                k.name,
                &k.source[..k.source.len().min(400)]
            );
            for l in k.launches.iter().map(|&i| LaunchId::new(i)) {
                assert_eq!(plan.launches[l].kernel.name(), k.plan_kernel);
                assert_eq!(plan.launches[l].cube_dim, k.cube_dim, "{}: launched as compiled", k.name);
            }
        }
        if float == FloatType::Bf16 {
            assert!(kernels.iter().any(|k| k.source.contains("__nv_bfloat16")), "bf16 buffers are bf16 in CUDA");
        }
        // The GPU forms: every grouped GEMM folds its experts' slots into full tiles, every
        // layer norm (width 384) and the stage softmaxes over long rows get a cube per row.
        for l in plan.launches.values() {
            match &l.kernel {
                Kernel::MatMul { grouped: Some(g), .. } => assert!(g.fold_experts.is_some(), "{}", l.scope),
                Kernel::LayerNorm { row_cube, .. } => assert_eq!(*row_cube, Some(128), "{}", l.scope),
                _ => {}
            }
        }
    }
}

/// NVRTC, or `None` (said on stderr) where it is not installed and CALM_REQUIRE_NVRTC is unset;
/// `scripts/test` sets it, so the suite never skips these.
fn nvrtc_or_skip(test: &str) -> Option<Nvrtc> {
    match Toolkit::find() {
        Ok(toolkit) => Some(Nvrtc::load(&toolkit).unwrap()),
        Err(e) if std::env::var_os("CALM_REQUIRE_NVRTC").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// With NVRTC installed (`scripts/fetch-cuda`, which `scripts/test` runs and which sets
/// CALM_REQUIRE_NVRTC), every kernel of the paper plan compiles for sm_90 without spills: on
/// the FP32 pipelines (a GPU without tensor cores, or f32 under `highest`), and as Hopper runs
/// it with bf16 buffers, f16 buffers, and f32 buffers under `high` (TF32). The tensor-core
/// GEMMs' PTX multiplies on the tensor cores (`wmma.mma` / `mma.sync`); no other kernel's does.
/// With Hopper's planes of 32, the row kernels' cubes combine by shuffles (`shfl.sync.bfly`).
#[test]
fn the_paper_plan_compiles_for_sm_90_without_spills() {
    let Some(nvrtc) = nvrtc_or_skip("the_paper_plan_compiles_for_sm_90_without_spills") else { return };
    let sm90 = |float, precision| LowerOptions { float, precision, ..LowerOptions::sm90() };
    // At 3 × 7 every shared-tile GEMM takes the small tile; at 64 × 128 the large ones the
    // default.
    let options = [
        (LowerOptions { float: FloatType::F32, ..LowerOptions::gpu() }, "batch=3,tokens=7"),
        (LowerOptions { float: FloatType::F32, ..LowerOptions::gpu() }, "batch=64,tokens=128"),
        (LowerOptions { float: FloatType::Bf16, ..LowerOptions::gpu() }, "batch=3,tokens=7"),
        (sm90(FloatType::Bf16, Precision::Highest), "batch=3,tokens=7"),
        (sm90(FloatType::F16, Precision::Highest), "batch=3,tokens=7"),
        (sm90(FloatType::F32, Precision::High), "batch=3,tokens=7"),
    ];
    let mut tiles = std::collections::BTreeSet::new();
    for (opts, bind) in &options {
        let (float, plan) = (opts.float, paper_plan_for(opts, bind));
        // The reflection rounds' GEMMs (a row per sample) have few tiles: k splits (both GEMM
        // kernels compile so).
        let splits = plan.launches.values().filter(|l| matches!(l.kernel, Kernel::MatMul { split_k: Some(_), .. }));
        assert!(splits.count() > 0, "{float:?} {bind}: GEMMs with k split");
        tiles.extend(plan.launches.values().filter_map(|l| match l.kernel {
            Kernel::MatMul { gemm: calm_passes::plan::Gemm::SharedTiles(t), .. } => Some((t.tile_m, t.tile_n)),
            _ => None,
        }));
        let (mut tensor_kernels, mut shuffling_kernels) = (0, 0);
        for k in cuda_sources(&plan).unwrap() {
            let compiled = nvrtc.compile(&k.name, &k.source, "sm_90").unwrap_or_else(|e| panic!("{float:?}: {e}"));
            assert!(compiled.ptx.contains(".target sm_90"), "{}: PTX for sm_90", k.name);
            let r =
                compiled.resources.iter().find(|r| r.function == k.entry).unwrap_or_else(|| {
                    panic!("{}: no ptxas report for {} in {:?}", k.name, k.entry, compiled.resources)
                });
            assert!(r.registers > 0 && r.registers <= 255, "{}: {r:?}", k.name);
            assert_eq!((r.spill_store_bytes, r.spill_load_bytes), (0, 0), "{float:?} {}: spills", k.name);
            let unit = plan.launches[LaunchId::new(k.launches[0])].kernel.compute_unit();
            let mma = compiled.ptx.contains("wmma.mma") || compiled.ptx.contains("mma.sync");
            assert_eq!(mma, unit.is_tensor_core(), "{float:?} {} ({unit}): tensor-core products in its PTX", k.name);
            tensor_kernels += usize::from(mma);
            // Row kernels given planes combine by butterflies of shuffles; nothing else shuffles.
            let plane = plan.launches[LaunchId::new(k.launches[0])].kernel.row_plane();
            assert_eq!(plane.is_some(), compiled.ptx.contains("shfl.sync.bfly"), "{float:?} {}: shuffles", k.name);
            shuffling_kernels += usize::from(plane.is_some());
        }
        let want = opts.tensor_unit().is_some();
        assert_eq!(tensor_kernels > 0, want, "{float:?} {:?}: {tensor_kernels} tensor-core kernels", opts.precision);
        assert_eq!(
            shuffling_kernels > 0,
            opts.plane_width.is_some(),
            "{float:?}: {shuffling_kernels} shuffling kernels"
        );
    }
    assert!(tiles.contains(&(64, 64)) && tiles.contains(&(32, 32)), "both shared tiles compiled: {tiles:?}");
}

/// Attention over many keys in tiles, as sm_90 runs it: heads of 32 (MiniLM's) and 64 (the
/// paper's module width) in bf16, f16, TF32 (f32 buffers under `high`) and on the FP32
/// pipelines (f32 under `highest`) compile without spills; the tensor-core forms multiply with
/// `mma` in their PTX, the FP32 one does not; and each uses the shared memory the lowering
/// budgets for it.
#[test]
fn tiled_attention_compiles_for_sm_90() {
    let Some(nvrtc) = nvrtc_or_skip("tiled_attention_compiles_for_sm_90") else { return };
    for (width, heads) in [(384u64, 12u64), (512, 8)] {
        let mut b = GraphBuilder::new("attention");
        let x = b.input("x", DType::F32, shape![3u64, 70u64, width]).unwrap();
        let mask = b.input("mask", DType::F32, shape![3u64, 70u64]).unwrap();
        let bias = nn::key_mask_bias(&mut b, mask, -10000.0).unwrap();
        let y = nn::multi_head_attention(&mut b, "attention", x, x, heads, Some(bias)).unwrap();
        b.output("y", y);
        let g = b.finish().unwrap();
        for (float, precision, unit, operand_bytes) in [
            (FloatType::Bf16, Precision::Highest, ComputeUnit::TensorBf16, 2),
            (FloatType::F16, Precision::Highest, ComputeUnit::TensorF16, 2),
            (FloatType::F32, Precision::High, ComputeUnit::TensorTf32, 4),
            (FloatType::F32, Precision::Highest, ComputeUnit::Fp32Cores, 4),
        ] {
            let opts = LowerOptions { float, precision, ..LowerOptions::sm90() };
            let plan = compile(&g, &Bindings::new(), true, &opts).unwrap().plan;
            let tiled: Vec<_> = plan
                .launches
                .values()
                .filter_map(|l| match l.kernel {
                    Kernel::Attention { tiles, head_dim, .. } => Some((tiles, head_dim)),
                    _ => None,
                })
                .collect();
            assert_eq!(tiled, [(Some(unit), width / heads)], "{float:?} {precision:?}");
            let kernels = cuda_sources(&plan).unwrap();
            let k = kernels.iter().find(|k| k.plan_kernel == "attention").unwrap();
            let budget = calm_passes::plan::attention_tile_bytes(width / heads, operand_bytes);
            assert_eq!(k.shared_bytes as u64, budget, "{float:?} {unit}: shared memory as the lowering budgets it");
            let compiled = nvrtc.compile(&k.name, &k.source, "sm_90").unwrap_or_else(|e| panic!("{float:?}: {e}"));
            let r = compiled.resources.iter().find(|r| r.function == k.entry).unwrap();
            assert_eq!((r.spill_store_bytes, r.spill_load_bytes), (0, 0), "{float:?} {unit}: spills ({r:?})");
            let mma = compiled.ptx.contains("wmma.mma") || compiled.ptx.contains("mma.sync");
            assert_eq!(mma, unit.is_tensor_core(), "{float:?} {unit}: tensor-core products in its PTX");
        }
    }
}

/// What calm runs on a CUDA device to measure it (the ceilings' microbenchmarks, tensor-core
/// products included, and the device clock's stamps) compiles for sm_90.
#[test]
fn the_measuring_kernels_compile_for_sm_90() {
    let sources = calm_runtime::cuda_target::measurement::measurement_sources().unwrap();
    assert_eq!(sources.len(), 8, "fma, mma ×3, copy, nothing, stamp, hold");
    let Some(nvrtc) = nvrtc_or_skip("the_measuring_kernels_compile_for_sm_90") else { return };
    let mut tensor_products = 0;
    for (entry, source) in &sources {
        let compiled = nvrtc.compile(entry, source, "sm_90").unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert!(compiled.ptx.contains(".target sm_90"), "{entry}");
        tensor_products += usize::from(compiled.ptx.contains("mma.sync") || compiled.ptx.contains("wmma.mma"));
        if entry == "calm_stamp" || entry == "calm_hold" {
            assert!(compiled.ptx.contains("%globaltimer"), "{entry} reads the GPU's global timer");
        }
    }
    assert_eq!(tensor_products, 3, "bf16, f16 and tf32 products on tensor cores");
}

/// Burn's CUDA backend is a peer wherever CUDA answers; elsewhere (this machine, CI) its
/// absence is one line of the report, not a failure.
#[test]
fn the_burn_cuda_peer_runs_where_cuda_answers_and_says_why_not_elsewhere() {
    let mut b = GraphBuilder::new("peer");
    let x = b.input("x", DType::F32, shape![3u64, 5u64]).unwrap();
    let y = nn::linear(&mut b, "lin", x, 7).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let peer = calm_runtime::bench::burn_cuda_forward(&g, &Bindings::new(), 1);
    match calm_runtime::bench::cuda_answers() {
        Ok(()) => assert!(peer.is_ok(), "{peer:?}"),
        Err(_) => {
            let why = peer.expect_err("no CUDA here");
            assert!(why.contains("CUDA") && !why.contains('\n'), "one line naming CUDA: {why}");
        }
    }
}

/// The cubek-matmul comparison of `calm bench` runs on calm's own client: on lavapipe only the
/// unit-tile strategies run (no cooperative matrices), each matches an f64 product at sizes
/// that are not multiples of any tile, and the tensor-core strategies are reported, not hidden.
#[test]
fn cubek_matmul_runs_beside_calm_on_the_same_client_and_matches_at_awkward_sizes() {
    use calm_runtime::bench::cubek;
    let client = WgpuRuntime::client(&WgpuDevice::default());
    let out = cubek::gemm(&client, (37, 70, 45), calm_passes::plan::Precision::Highest, 1);
    assert!(out.rows.len() >= 2, "the unit-tile strategies run on lavapipe: {:?}", out.skipped);
    for r in &out.rows {
        assert!(r.name.ends_with("f32 tiles"), "{}", r.name);
        let error = r.max_error.expect("every cubek row is checked");
        assert!(error < 1e-5, "{}: error {error}", r.name);
        assert!(r.seconds > 0.0 && r.flops == 2.0 * (37 * 70 * 45) as f64);
    }
    let skipped = out.skipped.join("\n");
    assert!(skipped.contains("matmul_simple_cyclic_cmma,"), "{skipped}");
    // Every candidate is either a row or named in a skipped line ("cubek a, b: why").
    let named: usize = out.skipped.iter().map(|l| l.split(": ").next().unwrap_or("").split(", ").count()).sum();
    assert_eq!(out.rows.len() + named, cubek::candidates().len(), "{skipped}");
}
