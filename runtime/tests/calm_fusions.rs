//! The CALM pattern fusions (Gumbel-softmax pooling, attention): each fires on the subgraph it
//! is for, its kernel matches the reference executor on the unfused graph (random inputs of
//! awkward sizes, masked tokens, outputs poisoned with NaN), and a broken pattern declines and
//! still computes the same thing.

use std::collections::BTreeMap;

use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::FloatDType;
use calm_ir::graph::Output;
use calm_ir::{nn, shape, BinaryFn, Bindings, DType, Graph, GraphBuilder, Op, UnaryFn, ValueId};
use calm_models::identity_pool::cluster;
use calm_models::CalmConfig;
use calm_passes::compile::fusion_passes;
use calm_passes::lower::{lower, LowerOptions};
use calm_passes::memory::check_memory;
use calm_passes::plan::{ComputeUnit, Gemm, Kernel, KernelPlan};
use calm_passes::{PassLog, Pipeline};
use calm_runtime::device::DeviceExecutor;
use calm_runtime::host::{HostData, HostTensor};
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::{bind_inputs, Reference};
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::Runtime;

const F: DType = DType::F32;

/// Runs the fusion passes on `g`, then compares the fused graph on the device (and on the
/// reference) with the unfused graph on the reference in f64. Returns the passes' notes.
fn check_fused(g: &Graph, feeds: &BTreeMap<String, HostTensor>, tol: f64) -> PassLog {
    check_fused_with(g, feeds, &ParamStore::init(g, 7), tol)
}

fn check_fused_with(g: &Graph, feeds: &BTreeMap<String, HostTensor>, params: &ParamStore, tol: f64) -> PassLog {
    check_fused_lowered(g, feeds, params, tol, &LowerOptions::default())
}

fn check_fused_lowered(
    g: &Graph,
    feeds: &BTreeMap<String, HostTensor>,
    params: &ParamStore,
    tol: f64,
    opts: &LowerOptions,
) -> PassLog {
    let mut fused = g.clone();
    let report = Pipeline::new(fusion_passes()).run(&mut fused).unwrap();
    let reference = Reference::<Flex>::new(FlexDevice, FloatDType::F64);
    let want = reference.run(g, params, feeds).unwrap();
    let on_reference = reference.run(&fused, params, feeds).unwrap();
    let plan = lower(&fused, &bind_inputs(g, feeds).unwrap(), opts).unwrap();
    check_memory(&plan).unwrap();
    let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(WgpuRuntime::client(&WgpuDevice::default()), plan);
    exec.poison();
    exec.load_params(params).unwrap();
    let on_device = exec.run(feeds).unwrap();
    for (name, w) in &want {
        let w = w.data.to_f64();
        let exact = on_reference[name].data.to_f64();
        assert!(
            w.iter().zip(&exact).all(|(a, b)| a == b || (a - b).abs() <= 1e-12 * (1.0 + a.abs())),
            "`{name}`: the fused graph computes something else on the reference"
        );
        let d = on_device[name].data.to_f64();
        let scale = w.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
        for (i, (a, b)) in w.iter().zip(&d).enumerate() {
            let err = (a - b).abs() / scale;
            assert!(err <= tol, "`{name}`[{i}]: device {b}, reference {a} (relative error {err:.2e})");
        }
    }
    report.log
}

/// The plan of `g` after every fusion pass, lowered with `opts`.
fn fused_plan(g: &Graph, bindings: &Bindings, opts: &LowerOptions) -> KernelPlan {
    let mut fused = g.clone();
    Pipeline::new(fusion_passes()).run(&mut fused).unwrap();
    lower(&fused, bindings, opts).unwrap()
}

fn fired(log: &PassLog, pass: &str) -> usize {
    log.of(pass).filter(|n| n.fired).count()
}

fn declined(log: &PassLog, pass: &str) -> Vec<String> {
    log.of(pass).filter(|n| !n.fired).map(|n| n.detail.clone()).collect()
}

/// Masks with one real token in sample 0, none in sample 1 (if `empty` and there is one),
/// random lengths after.
fn awkward_mask(feeds: &mut BTreeMap<String, HostTensor>, batch: usize, tokens: usize, empty: bool) {
    let mut mask = feeds["mask"].data.to_f64();
    for t in 0..tokens {
        mask[t] = if t == 0 { 1.0 } else { 0.0 };
        if empty && batch > 1 {
            mask[tokens + t] = 0.0;
        }
    }
    feeds.insert("mask".into(), HostTensor::f32(vec![batch, tokens], mask.iter().map(|&x| x as f32).collect()));
}

/// A cluster head of `clusters` on a stream of `width` columns, as CALM's stage 3 builds it.
fn pool_graph(batch: u64, tokens: u64, width: u64, clusters: u64, noise: bool) -> Graph {
    let mut cfg = CalmConfig::preset("tiny").unwrap();
    cfg.clusters = clusters;
    cfg.cluster_hidden = 9;
    let mut b = GraphBuilder::new("pool");
    let x = b.input("x", F, shape![batch, tokens, width]).unwrap();
    let mask = b.input("mask", F, shape![batch, tokens]).unwrap();
    let tau = b.input("temperature", F, shape![]).unwrap();
    if noise {
        b.enable_randomness().unwrap();
    }
    let (pooled, assign) = cluster(&mut b, &cfg, x, mask, tau, noise).unwrap();
    b.output("pooled", pooled);
    b.output("assign", assign);
    b.finish().unwrap()
}

fn pool_feeds(g: &Graph, batch: usize, tokens: usize) -> BTreeMap<String, HostTensor> {
    let mut feeds = random_inputs(g, &Bindings::new(), 11).unwrap();
    awkward_mask(&mut feeds, batch, tokens, true);
    feeds
}

#[test]
fn gumbel_pool_matches_the_reference_at_awkward_sizes() {
    // (batch, tokens, width, clusters): one token; K = 1 and K = 7; more tokens than a tile
    // (130 > 128 threads); widths that do not divide among the threads.
    for (batch, tokens, width, clusters) in [(1, 1, 1, 1), (3, 7, 33, 7), (2, 130, 130, 5), (5, 9, 17, 3)] {
        for noise in [true, false] {
            let g = pool_graph(batch, tokens, width, clusters, noise);
            let feeds = pool_feeds(&g, batch as usize, tokens as usize);
            let log = check_fused(&g, &feeds, 1e-4);
            assert_eq!(fired(&log, "fuse_gumbel_pool"), 1, "{batch}x{tokens}x{width} K={clusters}: {:?}", log.notes);
        }
    }
}

#[test]
fn gumbel_pool_writes_the_assignment_only_when_asked() {
    let mut g = pool_graph(3, 7, 33, 5, true);
    g.outputs.retain(|o| o.name != "assign");
    calm_passes::dce(&mut g).unwrap();
    let feeds = pool_feeds(&g, 3, 7);
    assert_eq!(fired(&check_fused(&g, &feeds, 1e-4), "fuse_gumbel_pool"), 1);
    let plan = fused_plan(&g, &bind_inputs(&g, &feeds).unwrap(), &LowerOptions::default());
    let launch = plan.launches.values().find(|l| l.kernel.name() == "gumbel_pool").unwrap();
    assert_eq!(plan.buffers[launch.writes[1]].len, 1, "a placeholder, not [B, T, K]");
}

#[test]
fn broken_pool_patterns_decline_and_stay_correct() {
    // The logits read elsewhere: declines, names the logits.
    let mut g = pool_graph(3, 7, 33, 5, true);
    let softmax = g.nodes.iter().find(|(_, n)| matches!(n.op, Op::Softmax { .. })).map(|(id, _)| id).unwrap();
    let tempered = g.nodes[softmax].args[0];
    g.outputs.push(Output { name: "probe".into(), value: tempered });
    let log = check_fused(&g, &pool_feeds(&g, 3, 7), 1e-4);
    assert_eq!(fired(&log, "fuse_gumbel_pool"), 0);
    assert!(declined(&log, "fuse_gumbel_pool").iter().any(|r| r.contains("tempered logit")), "{:?}", log.notes);

    // The softmax over tokens instead of clusters: not this pattern (nothing is noted, since
    // the pass looks only at softmaxes over the last axis), and still correct.
    let mut g = pool_graph(3, 7, 33, 5, true);
    g.nodes[softmax].op = Op::Softmax { axis: 1 };
    let log = check_fused(&g, &pool_feeds(&g, 3, 7), 1e-4);
    assert_eq!(fired(&log, "fuse_gumbel_pool"), 0);

    // The pooled numerator read elsewhere.
    let mut g = pool_graph(3, 7, 33, 5, false);
    let numerator = g
        .nodes
        .values()
        .find(|n| n.op == (Op::MatMul { transpose_a: true, transpose_b: false }))
        .map(|n| n.results[0])
        .unwrap();
    g.outputs.push(Output { name: "probe".into(), value: numerator });
    let log = check_fused(&g, &pool_feeds(&g, 3, 7), 1e-4);
    assert!(declined(&log, "fuse_gumbel_pool").iter().any(|r| r.contains("numerator")), "{:?}", log.notes);
}

fn attention_graph(batch: u64, q_len: u64, kv_len: u64, width: u64, heads: u64, masked: bool) -> Graph {
    let mut b = GraphBuilder::new("attention");
    let q = b.input("q", F, shape![batch, q_len, width]).unwrap();
    let k = b.input("k", F, shape![batch, kv_len, width]).unwrap();
    let v = b.input("v", F, shape![batch, kv_len, width]).unwrap();
    let bias = if masked {
        let mask = b.input("mask", F, shape![batch, kv_len]).unwrap();
        Some(nn::key_mask_bias(&mut b, mask, -10000.0).unwrap())
    } else {
        None
    };
    let out = nn::attention(&mut b, q, k, v, heads, bias).unwrap();
    b.output("out", out);
    b.finish().unwrap()
}

#[test]
fn attention_matches_the_reference_at_awkward_sizes() {
    // (batch, q_len, kv_len, width, heads): single key, the cluster shape (K = 5; both short-key
    // path), keys longer than queries, 130 keys, one head; then on the long path (tiles of 64
    // query rows, 8 per thread) 37 queries (threads with 4 or 5 live rows) and 71 (a second
    // tile with 7), over key blocks whose last is partial.
    assert_eq!(calm_passes::plan::ATTENTION_QUERY_TILE, 64, "the sizes below assume it");
    for (batch, q_len, kv_len, width, heads) in
        [(1, 1, 1, 4, 1), (3, 5, 5, 24, 8), (2, 7, 33, 12, 3), (5, 1, 130, 6, 2), (2, 37, 19, 8, 2), (1, 71, 19, 8, 2)]
    {
        for masked in [false, true] {
            let g = attention_graph(batch, q_len, kv_len, width, heads, masked);
            let mut feeds = random_inputs(&g, &Bindings::new(), 5).unwrap();
            if masked {
                awkward_mask(&mut feeds, batch as usize, kv_len as usize, false);
            }
            let log = check_fused(&g, &feeds, 1e-4);
            assert_eq!(fired(&log, "fuse_attention"), 1, "{:?}", log.notes);
        }
    }
    // A sample whose keys are all masked: every score is s − 10000, which f32 holds to about
    // 1e-3 (the reference runs in f64), so the probabilities agree only to that; the unfused
    // device plan loses the same.
    let g = attention_graph(3, 5, 7, 12, 3, true);
    let mut feeds = random_inputs(&g, &Bindings::new(), 5).unwrap();
    awkward_mask(&mut feeds, 3, 7, true);
    assert_eq!(fired(&check_fused(&g, &feeds, 2e-3), "fuse_attention"), 1);
}

/// The attention launches of `g`'s fused plan lowered with `opts`.
fn attention_launches(g: &Graph, feeds: &BTreeMap<String, HostTensor>, opts: &LowerOptions) -> Vec<Kernel> {
    let plan = fused_plan(g, &bind_inputs(g, feeds).unwrap(), opts);
    plan.launches.values().filter(|l| matches!(l.kernel, Kernel::Attention { .. })).map(|l| l.kernel.clone()).collect()
}

#[test]
fn attention_in_tiles_matches_the_reference_at_awkward_sizes() {
    // The GPU lowering's tiled attention, its products on the FP32 pipelines (lavapipe has no
    // tensor cores; only the products differ on them): (batch, q_len, kv_len, width, heads).
    // 70 queries are a full tile and one of 6; 45 keys a full block of 32 and one of 13; 17
    // keys one partial block, just past the short path; one query. Lavapipe's 32 KiB of shared
    // memory per cube hold the f32 tiles of heads of 16, not 32: those keep one thread per row.
    assert_eq!((calm_passes::plan::ATTENTION_QUERY_TILE, calm_kernels::attention_tiles::KEY_TILE), (64, 32));
    let client = WgpuRuntime::client(&WgpuDevice::default());
    let opts = LowerOptions {
        shared_memory: client.properties().hardware.max_shared_memory_size as u64,
        ..LowerOptions::gpu()
    };
    assert_eq!(opts.shared_memory, 32 << 10, "lavapipe's limit, which the sizes below assume");
    for (batch, q_len, kv_len, width, heads) in [(2, 70, 45, 32, 2), (3, 1, 17, 16, 1), (1, 37, 66, 64, 2)] {
        for masked in [false, true] {
            let g = attention_graph(batch, q_len, kv_len, width, heads, masked);
            let mut feeds = random_inputs(&g, &Bindings::new(), 9).unwrap();
            if masked {
                awkward_mask(&mut feeds, batch as usize, kv_len as usize, false);
            }
            let launches = attention_launches(&g, &feeds, &opts);
            let want = (width / heads == 16).then_some(ComputeUnit::Fp32Cores);
            assert!(matches!(launches[..], [Kernel::Attention { tiles, .. }] if tiles == want), "{launches:?}");
            let log = check_fused_lowered(&g, &feeds, &ParamStore::init(&g, 7), 1e-4, &opts);
            assert_eq!(fired(&log, "fuse_attention"), 1, "{:?}", log.notes);
        }
    }
    // A sample with every key masked (see the test above for the tolerance).
    let g = attention_graph(3, 20, 40, 32, 2, true);
    let mut feeds = random_inputs(&g, &Bindings::new(), 5).unwrap();
    awkward_mask(&mut feeds, 3, 40, true);
    check_fused_lowered(&g, &feeds, &ParamStore::init(&g, 7), 2e-3, &opts);
    // Self-attention reading q, k and v in place from one joint projection (row stride 3m),
    // and heads of 12, which keep one thread per query row.
    for (width, heads, tiled) in [(48, 3, true), (36, 3, false)] {
        let mut b = GraphBuilder::new("self_attention");
        let x = b.input("x", F, shape![2u64, 37u64, width]).unwrap();
        let y = nn::multi_head_attention(&mut b, "attention", x, x, heads, None).unwrap();
        b.output("y", y);
        let g = b.finish().unwrap();
        let feeds = random_inputs(&g, &Bindings::new(), 4).unwrap();
        let launches = attention_launches(&g, &feeds, &opts);
        assert!(
            matches!(&launches[..], [Kernel::Attention { tiles, layout, .. }] if tiles.is_some() == tiled && layout[1] == [3 * width, width]),
            "{launches:?}"
        );
        check_fused_lowered(&g, &feeds, &ParamStore::init(&g, 7), 1e-4, &opts);
    }
}

#[test]
fn broken_attention_patterns_decline_and_stay_correct() {
    let g = attention_graph(3, 5, 7, 12, 3, true);
    let softmax = g.nodes.iter().find(|(_, n)| matches!(n.op, Op::Softmax { .. })).map(|(id, _)| id).unwrap();
    let probs = g.nodes[softmax].results[0];

    // The probabilities are a graph output.
    let mut probe = g.clone();
    probe.outputs.push(Output { name: "probs".into(), value: probs });
    let log = check_fused(&probe, &random_inputs(&probe, &Bindings::new(), 3).unwrap(), 1e-4);
    assert_eq!(fired(&log, "fuse_attention"), 0);
    assert!(declined(&log, "fuse_attention").iter().any(|r| r.contains("probabilities")), "{:?}", log.notes);

    // A softmax over the queries: not attention. (Without the mask: a masked key's scores all
    // sit near −10000 in this column, which f32 holds only to about 1e-3.)
    let g = attention_graph(3, 5, 7, 12, 3, false);
    let softmax = g.nodes.iter().find(|(_, n)| matches!(n.op, Op::Softmax { .. })).map(|(id, _)| id).unwrap();
    let mut axis = g.clone();
    axis.nodes[softmax].op = Op::Softmax { axis: 2 };
    let log = check_fused(&axis, &random_inputs(&axis, &Bindings::new(), 3).unwrap(), 1e-4);
    assert_eq!(fired(&log, "fuse_attention"), 0);

    // The scale multiplies by a computed value, not a constant.
    let mut scale = g.clone();
    let scaled = scale.nodes.values().find(|n| n.op == Op::Binary(BinaryFn::Mul)).map(|n| n.args.clone()).unwrap();
    let constant = scaled.into_iter().find(|&a| matches!(scale.nodes[scale.producer(a)].op, Op::Constant { .. }));
    let c = constant.unwrap();
    let node = scale.producer(c);
    let scope = scale.nodes[node].scope.clone();
    let ty = scale.value_type(c).clone();
    let doubled = scale.add_node(Op::Binary(BinaryFn::Add), vec![c, c], vec![ty], &scope);
    let doubled: ValueId = scale.result(doubled);
    let reader = scale
        .nodes
        .iter()
        .find(|(_, n)| n.op == Op::Binary(BinaryFn::Mul) && n.args.contains(&c))
        .map(|(id, _)| id)
        .unwrap();
    for a in scale.nodes[reader].args.iter_mut() {
        if *a == c {
            *a = doubled;
        }
    }
    let log = check_fused(&scale, &random_inputs(&scale, &Bindings::new(), 3).unwrap(), 1e-4);
    assert!(declined(&log, "fuse_attention").iter().any(|r| r.contains("scale")), "{:?}", log.notes);
}

#[test]
fn fused_runs_are_deterministic() {
    // The Gumbel pool over two token tiles, and a whole CALM graph with sparse experts.
    let pool = pool_graph(3, 130, 33, 5, true);
    let calm = moe_graph(4, 2, 2);
    for (g, bindings) in [(pool, Bindings::new()), (calm, Bindings::new().with("batch", 7).with("tokens", 5))] {
        let mut feeds = random_inputs(&g, &bindings, 2).unwrap();
        if g.name == "pool" {
            awkward_mask(&mut feeds, 3, 130, true);
        }
        let mut fused = g.clone();
        Pipeline::new(fusion_passes()).run(&mut fused).unwrap();
        let params = ParamStore::init(&g, 1);
        let plan = lower(&fused, &bind_inputs(&g, &feeds).unwrap(), &LowerOptions::default()).unwrap();
        let run = || {
            let client = WgpuRuntime::client(&WgpuDevice::default());
            let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(client, plan.clone());
            exec.load_params(&params).unwrap();
            exec.run(&feeds).unwrap()
        };
        let (a, b) = (run(), run());
        for (name, x) in &a {
            let (HostData::F32(x), HostData::F32(y)) = (&x.data, &b[name].data) else { continue };
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "`{name}` differs between runs");
        }
    }
}

/// A router as CALM's stage 4 builds it, with the weights as inputs so tests can force ties.
fn route_graph(batch: u64, width: u64, experts: u64, k: u64, all_outputs: bool) -> Graph {
    let mut b = GraphBuilder::new("route");
    let x = b.input("x", F, shape![batch, width]).unwrap();
    let w = b.input("w", F, shape![experts, width]).unwrap();
    let bias = b.input("bias", F, shape![experts]).unwrap();
    let product = b.matmul(x, w, false, true).unwrap();
    let logits = b.add(product, bias).unwrap();
    let prob = b.softmax(logits, -1).unwrap();
    let (values, indices) = b.top_k(prob, k).unwrap();
    let total = b.reduce_sum(values, &[-1], true).unwrap();
    let gates = b.div(values, total).unwrap();
    let chosen = b.one_hot(indices, experts, F).unwrap();
    let gates = b.reshape(gates, shape![batch, k, 1u64]).unwrap();
    let weighted = b.mul(chosen, gates).unwrap();
    let matrix = b.reduce_sum(weighted, &[1], false).unwrap();
    b.output("gates", matrix);
    if all_outputs {
        b.output("prob", prob);
        b.output("chosen", chosen);
    }
    b.finish().unwrap()
}

#[test]
fn routing_matches_the_reference() {
    // (batch, width, experts, k): k = 1, k = E, odd sizes; with all results read or only gates.
    for (batch, width, experts, k) in [(1, 1, 1, 1), (7, 33, 4, 2), (5, 17, 3, 3), (130, 9, 5, 1)] {
        for all_outputs in [true, false] {
            let g = route_graph(batch, width, experts, k, all_outputs);
            let feeds = random_inputs(&g, &Bindings::new(), 9).unwrap();
            let log = check_fused(&g, &feeds, 1e-5);
            assert_eq!(fired(&log, "fuse_route"), 1, "{:?}", log.notes);
        }
    }
}

#[test]
fn routing_breaks_ties_to_the_lower_expert_and_may_send_everything_to_one() {
    let (batch, width, experts) = (7usize, 5usize, 4usize);
    for (bias, k, want) in [
        // Experts 0, 1 and 3 tie: top-2 takes 0 and 1.
        (vec![0.5f32, 0.5, 0.1, 0.5], 2, vec![0.5f32, 0.5, 0.0, 0.0]),
        // Everything to expert 2; the others receive no unit.
        (vec![0.0, 0.0, 10.0, 0.0], 1, vec![0.0, 0.0, 1.0, 0.0]),
    ] {
        let g = route_graph(batch as u64, width as u64, experts as u64, k, true);
        let mut feeds = random_inputs(&g, &Bindings::new(), 9).unwrap();
        feeds.insert("w".into(), HostTensor::f32(vec![experts, width], vec![0.0; experts * width]));
        feeds.insert("bias".into(), HostTensor::f32(vec![experts], bias));
        let log = check_fused(&g, &feeds, 1e-6);
        assert_eq!(fired(&log, "fuse_route"), 1);
        // The reference agrees with the fused kernel (checked above); here, with the rule.
        let mut fused = g.clone();
        Pipeline::new(fusion_passes()).run(&mut fused).unwrap();
        let got =
            Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(&fused, &ParamStore::init(&g, 1), &feeds).unwrap();
        let gates = got["gates"].data.to_f64();
        for row in gates.chunks(experts) {
            let row: Vec<f32> = row.iter().map(|&x| x as f32).collect();
            assert_eq!(row, want);
        }
    }
}

#[test]
fn broken_routing_declines_and_stays_correct() {
    // The top-k values read elsewhere.
    let mut g = route_graph(7, 33, 4, 2, false);
    let values = g.nodes.values().find(|n| matches!(n.op, Op::TopK { .. })).map(|n| n.results[0]).unwrap();
    g.outputs.push(Output { name: "values".into(), value: values });
    let log = check_fused(&g, &random_inputs(&g, &Bindings::new(), 9).unwrap(), 1e-5);
    assert_eq!(fired(&log, "fuse_route"), 0);
    assert!(declined(&log, "fuse_route").iter().any(|r| r.contains("top-k values")), "{:?}", log.notes);
    // Gates not renormalised (the division removed): declines.
    let mut g = route_graph(7, 33, 4, 2, false);
    let divide = g.nodes.iter().find(|(_, n)| n.op == Op::Binary(BinaryFn::Div)).map(|(id, _)| id).unwrap();
    let numerator = g.nodes[divide].args[0];
    let quotient = g.nodes[divide].results[0];
    g.replace_all_uses(quotient, numerator).unwrap();
    calm_passes::dce(&mut g).unwrap();
    let log = check_fused(&g, &random_inputs(&g, &Bindings::new(), 9).unwrap(), 1e-5);
    assert_eq!(fired(&log, "fuse_route"), 0, "{:?}", log.notes);
}

/// Three linears with a ReLU reading one input, each read by a second linear (stage 1's form).
fn three_channels(batch: u64, tokens: u64, width: u64, hidden: u64) -> Graph {
    three_channels_with(batch, tokens, width, hidden, false)
}

/// With `per_sample`, channel `e` adds a row per sample (`[batch, 1, 7]`, as CALM's culture
/// embedding does) to its second layer.
fn three_channels_with(batch: u64, tokens: u64, width: u64, hidden: u64, per_sample: bool) -> Graph {
    let mut b = GraphBuilder::new("channels");
    let x = b.input("x", F, shape![batch, tokens, width]).unwrap();
    let row = per_sample.then(|| b.input("row", F, shape![batch, 1u64, 7u64]).unwrap());
    for name in ["s", "e", "l"] {
        let h = nn::linear(&mut b, &format!("{name}1"), x, hidden).unwrap();
        let h = b.relu(h).unwrap();
        let mut y = nn::linear(&mut b, &format!("{name}2"), h, 7).unwrap();
        if let (Some(row), "e") = (row, name) {
            y = b.add(y, row).unwrap();
        }
        b.output(name, y);
    }
    b.finish().unwrap()
}

#[test]
fn linears_reading_one_input_run_as_one_gemm() {
    // Widths that keep the joint GEMM on the vector kernel (multiples of 4) and ones that do not.
    for (batch, tokens, width, hidden) in [(3, 7, 12, 8), (2, 5, 9, 5)] {
        let g = three_channels(batch, tokens, width, hidden);
        let feeds = random_inputs(&g, &Bindings::new(), 4).unwrap();
        let log = check_fused(&g, &feeds, 1e-5);
        assert_eq!(fired(&log, "fuse_projections"), 1, "{:?}", log.notes);
        let plan = fused_plan(&g, &bind_inputs(&g, &feeds).unwrap(), &LowerOptions::default());
        // One joint GEMM, three second layers, and no copies of the slices.
        assert_eq!(plan.launches.len(), 4, "{:?}", plan.launches.values().map(|l| l.kernel.name()).collect::<Vec<_>>());
        assert_eq!(plan.params.iter().filter(|p| p.concat.is_some()).count(), 2, "weights and biases joined at load");
    }
    // A per-sample row in a second layer's epilogue: that GEMM keeps its batch (the row cannot
    // follow flattened rows) and reads its slice of the joint GEMM batch by batch.
    for gemm in [LowerOptions::default(), LowerOptions::gpu()] {
        let g = three_channels_with(3, 7, 12, 8, true);
        let feeds = random_inputs(&g, &Bindings::new(), 5).unwrap();
        check_fused_lowered(&g, &feeds, &ParamStore::init(&g, 7), 1e-5, &gemm);
        let plan = fused_plan(&g, &bind_inputs(&g, &feeds).unwrap(), &gemm);
        let names: Vec<&str> = plan.launches.values().map(|l| l.kernel.name()).collect();
        assert_eq!(names.len(), 4, "the row is added in an epilogue: {names:?}");
        let batched =
            plan.launches.values().filter(|l| matches!(&l.kernel, Kernel::MatMul { batch, .. } if batch[..] == [3]));
        assert_eq!(batched.count(), 1);
    }
}

#[test]
fn dropout_reads_its_slice_of_the_joint_gemm_in_place() {
    // Stage 1 in a training graph: each channel's ReLU output goes through its own dropout
    // (its own stream) before the second layer. The dropouts read their slices of the joint
    // GEMM where they lie; the noise follows each element of the slice, so the result equals
    // the unfused graph's, bit for bit in the mask.
    let mut b = GraphBuilder::new("channels_dropout");
    b.enable_randomness().unwrap();
    b.set_training(true);
    let x = b.input("x", F, shape![3u64, 7u64, 12u64]).unwrap();
    for name in ["s", "e", "l"] {
        let h = nn::linear(&mut b, &format!("{name}1"), x, 9).unwrap();
        let h = b.relu(h).unwrap();
        let h = b.dropout(h, 0.3).unwrap();
        let y = nn::linear(&mut b, &format!("{name}2"), h, 7).unwrap();
        b.output(name, y);
    }
    let g = b.finish().unwrap();
    let feeds = random_inputs(&g, &Bindings::new(), 6).unwrap();
    let log = check_fused(&g, &feeds, 1e-5);
    assert_eq!(fired(&log, "fuse_projections"), 1, "{:?}", log.notes);
    let plan = fused_plan(&g, &bind_inputs(&g, &feeds).unwrap(), &LowerOptions::default());
    let names: Vec<&str> = plan.launches.values().map(|l| l.kernel.name()).collect();
    assert!(!names.contains(&"copy"), "no slice is copied out: {names:?}");
    let sliced = plan.launches.values().filter(|l| l.kernel.reads_from_a_start());
    assert_eq!(
        sliced.count(),
        2,
        "the dropouts of the second and third slices start inside the joint result: {names:?}"
    );
}

#[test]
fn self_attention_projections_and_attention_fuse_together() {
    let mut b = GraphBuilder::new("self_attention");
    let x = b.input("x", F, shape![3u64, 5u64, 24u64]).unwrap();
    let y = nn::multi_head_attention(&mut b, "attention", x, x, 4, None).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let log = check_fused(&g, &random_inputs(&g, &Bindings::new(), 4).unwrap(), 1e-5);
    assert_eq!(fired(&log, "fuse_attention"), 1);
    assert!(log.of("fuse_projections").any(|n| n.fired && n.detail.contains("query, key, value")), "{:?}", log.notes);
}

#[test]
fn projections_decline_where_a_slice_would_be_copied() {
    let mut g = three_channels(3, 7, 12, 8);
    // A branch's activation is also a graph output.
    let relu = g.nodes.values().find(|n| n.op == Op::Unary(UnaryFn::Relu)).map(|n| n.results[0]).unwrap();
    g.outputs.push(Output { name: "probe".into(), value: relu });
    let log = check_fused(&g, &random_inputs(&g, &Bindings::new(), 4).unwrap(), 1e-5);
    assert_eq!(fired(&log, "fuse_projections"), 0);
    assert!(declined(&log, "fuse_projections").iter().any(|r| r.contains("graph output")), "{:?}", log.notes);
}

/// The tiny CALM inference graph with `experts` experts per dimension, `top_k` chosen, and
/// `layers` expert layers.
fn moe_graph(experts: u64, top_k: u64, layers: u64) -> Graph {
    let mut cfg = CalmConfig::preset("tiny").unwrap();
    cfg.experts = experts;
    cfg.top_k = top_k;
    cfg.expert_layers = layers;
    calm_models::build(&cfg, calm_models::Mode::Inference).unwrap()
}

#[test]
fn sparse_experts_match_the_dense_mixture() {
    // k = 2 of 4 with two layers, k = E, a single expert; an odd batch. (k = 1 is the tiny
    // preset's, run with every ablation in `fusion.rs`.)
    for (experts, top_k, layers) in [(4, 2, 2), (3, 3, 1), (1, 1, 1)] {
        let g = moe_graph(experts, top_k, layers);
        let b = Bindings::new().with("batch", 7).with("tokens", 5);
        let feeds = random_inputs(&g, &b, 3).unwrap();
        let log = check_fused(&g, &feeds, 1e-4);
        // Every dimension's mixture, in one fused op that also routes them.
        let dims = g.nodes.values().filter(|n| matches!(n.op, Op::TopK { .. })).count();
        let notes: Vec<_> = log.of("fuse_experts").filter(|n| n.fired).collect();
        // With more than one group, their results are written as the concatenation the graph
        // makes of them, by one combine.
        assert_eq!(notes.len(), 2 + (dims > 1) as usize, "E={experts} k={top_k}: {:?}", log.notes);
        assert!(notes[0].detail.starts_with(&format!("{dims} mixture")), "{:?}", notes[0]);
        assert!(notes[1].detail.starts_with(&format!("routers of {dims} group")), "{:?}", notes[1]);
        assert_eq!(routing_launches(&g, &b), (1, 0, 0), "E={experts} k={top_k}");
        let plan = fused_plan(&g, &b, &LowerOptions::default());
        let combines = plan.launches.values().filter(|l| l.kernel.name() == "combine").count();
        assert_eq!(combines, 1, "E={experts} k={top_k}: one combine for {dims} groups");
    }
}

/// The plan's launches of (`route_dispatch`, `route`, `dispatch`) for `g` after fusion.
fn routing_launches(g: &Graph, b: &Bindings) -> (usize, usize, usize) {
    let plan = fused_plan(g, b, &LowerOptions::default());
    let count = |name: &str| plan.launches.values().filter(|l| l.kernel.name() == name).count();
    (count("route_dispatch"), count("route"), count("dispatch"))
}

/// The training graph's mixtures route themselves and compute the load-balance statistics
/// `f` and `P` in the same kernel (checked against the dense graph, with top-2 of 4 and 5 of
/// 5, an odd batch); a router whose probabilities are also a graph output stays apart, and
/// the mixture reads its gates (the per-group dispatch), still correct.
#[test]
fn routing_kernel_orders_units_and_computes_balance_statistics() {
    for (experts, top_k) in [(4, 2), (5, 5)] {
        let mut cfg = CalmConfig::preset("tiny").unwrap();
        (cfg.experts, cfg.top_k) = (experts, top_k);
        let g = calm_models::build(&cfg, calm_models::Mode::Training).unwrap();
        let b = Bindings::new().with("batch", 7).with("tokens", 5);
        let feeds = random_inputs(&g, &b, 3).unwrap();
        let log = check_fused(&g, &feeds, 1e-4);
        let routed: Vec<_> = log.of("fuse_experts").filter(|n| n.fired && n.detail.contains("statistics")).collect();
        assert_eq!(routed.len(), 1, "E={experts} k={top_k}: {:?}", log.notes);
        assert_eq!(routing_launches(&g, &b), (1, 0, 0), "E={experts} k={top_k}");
        let mut fused = g.clone();
        Pipeline::new(fusion_passes()).run(&mut fused).unwrap();
        let stats_from_mixture = ["lb_fraction", "lb_prob"].iter().all(|name| {
            let v = fused.outputs.iter().find(|o| o.name == *name).expect("a training output").value;
            matches!(fused.nodes[fused.producer(v)].op, Op::Fused(calm_ir::fused::FusedOp::ExpertMixture { .. }))
        });
        assert!(stats_from_mixture, "the statistics are the mixture's results, not a stack of slices");
    }
    // The first router's probabilities as an extra output: that group cannot be absorbed.
    let mut g = moe_graph(4, 2, 1);
    let route_prob = g
        .nodes
        .values()
        .find(|n| matches!(n.op, Op::Softmax { .. }) && n.scope.contains("router"))
        .map(|n| n.results[0])
        .expect("a router softmax");
    g.outputs.push(Output { name: "router_prob".into(), value: route_prob });
    // And one group's mixed result too: the groups' results are then not joined, and each
    // group has its own combine.
    let dim0 = g
        .nodes
        .values()
        .find(|n| matches!(n.op, Op::ReduceSum { .. }) && n.scope.ends_with("dim0/combine"))
        .map(|n| n.results[0])
        .expect("dimension 0's combine");
    g.outputs.push(Output { name: "dim0_mixed".into(), value: dim0 });
    let b = Bindings::new().with("batch", 6).with("tokens", 5);
    let log = check_fused(&g, &random_inputs(&g, &b, 3).unwrap(), 1e-4);
    assert!(declined(&log, "fuse_experts").iter().any(|r| r.contains("graph output")), "{:?}", log.notes);
    let (one, routes, dispatches) = routing_launches(&g, &b);
    assert_eq!(one, 0);
    assert!(routes > 0 && dispatches > 0, "{routes} routes, {dispatches} dispatches");
    let plan = fused_plan(&g, &b, &LowerOptions::default());
    assert_eq!(plan.launches.values().filter(|l| l.kernel.name() == "combine").count(), dispatches);
}

#[test]
fn sparse_experts_with_all_units_on_one_expert() {
    // Router biases so large that every unit picks expert 2 first (and 0 second): the other
    // experts receive no unit, expert 2 receives all of them.
    let g = moe_graph(4, 2, 1);
    let b = Bindings::new().with("batch", 9).with("tokens", 5);
    let feeds = random_inputs(&g, &b, 3).unwrap();
    let mut params = ParamStore::init(&g, 7);
    let names: Vec<String> = g.params().map(|(_, n, _)| n.to_string()).filter(|n| n.ends_with("router/bias")).collect();
    assert!(!names.is_empty());
    for name in names {
        params.set(&name, vec![30.0, 0.0, 60.0, 0.0]);
    }
    let log = check_fused_with(&g, &feeds, &params, 1e-4);
    assert!(fired(&log, "fuse_experts") > 0, "{:?}", log.notes);
    // The vector GEMMs fold the slots' rows into tiles within one expert: expert 2's 9 slots
    // span more than one tile (the last one partial), and two experts have no tile at all.
    let plan = fused_plan(&g, &b, &LowerOptions::default());
    let folded: Vec<(u32, u64)> = plan
        .launches
        .values()
        .filter_map(|l| match &l.kernel {
            Kernel::MatMul { gemm: Gemm::Vectors { rows, .. }, grouped: Some(gr), m, .. } => {
                assert_eq!(gr.fold_experts, Some(8), "2 dimensions of 4 experts");
                Some((*rows, *m))
            }
            _ => None,
        })
        .collect();
    assert!(!folded.is_empty());
    assert!(
        folded.iter().all(|&(tile, tokens)| 9 * tokens > tile as u64 && 9 * tokens % tile as u64 != 0),
        "{folded:?}"
    );
    // The GPU lowering: shared-tile GEMMs folding the slots into tiles of one expert (with 9
    // units, expert 2's 45 rows in two tiles of 32, the last partial; with 1 unit, experts 2
    // and 0 one slot each, two experts none), and the layer norms a cube per row.
    let opts = LowerOptions::gpu();
    for batch in [9, 1] {
        let b = Bindings::new().with("batch", batch).with("tokens", 5);
        let feeds = random_inputs(&g, &b, 4).unwrap();
        check_fused_lowered(&g, &feeds, &params, 1e-4, &opts);
        let plan = fused_plan(&g, &b, &opts);
        let mut grouped = 0;
        for l in plan.launches.values() {
            match &l.kernel {
                Kernel::MatMul { gemm, grouped: Some(gr), .. } => {
                    grouped += 1;
                    assert_eq!(gr.fold_experts, Some(8), "{gemm:?}");
                    assert!(matches!(gemm, Gemm::SharedTiles(t) if t.tile_m == 32), "{gemm:?}");
                }
                Kernel::LayerNorm { grouped: Some(_), row_cube, .. } => assert_eq!(*row_cube, Some(32)),
                _ => {}
            }
        }
        assert!(grouped > 0);
    }
}

#[test]
fn dense_gates_decline_the_sparse_dispatch() {
    let mut g = moe_graph(3, 2, 1);
    calm_passes::ablate(&mut g, calm_passes::Ablation::DenseMoe).unwrap();
    let b = Bindings::new().with("batch", 5).with("tokens", 4);
    let log = check_fused(&g, &random_inputs(&g, &b, 3).unwrap(), 1e-4);
    assert_eq!(fired(&log, "fuse_experts"), 0);
    assert!(declined(&log, "fuse_experts").iter().any(|r| r.contains("router")), "{:?}", log.notes);
}

#[test]
fn gemms_of_few_tiles_split_k_and_sum_the_shares_in_order() {
    // A 37-row linear over a concatenation never stored (300 + 701 columns), with bias, ReLU
    // and a residual in the epilogue: on GPUs 4 tiles, so k splits and an elementwise launch
    // sums the shares (the last one short: 1001 columns in shares of 256) before the
    // epilogue. Compared with the reference on lavapipe through the shared-tile GEMM.
    let mut b = GraphBuilder::new("split_k");
    let x1 = b.input("x1", F, shape![37u64, 300u64]).unwrap();
    let x2 = b.input("x2", F, shape![37u64, 701u64]).unwrap();
    let r = b.input("r", F, shape![37u64, 45u64]).unwrap();
    let x = b.concat(&[x1, x2], -1).unwrap();
    let y = nn::linear(&mut b, "linear", x, 45).unwrap();
    let y = b.relu(y).unwrap();
    let y = b.add(y, r).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let feeds = random_inputs(&g, &Bindings::new(), 6).unwrap();
    let opts = LowerOptions::gpu();
    let plan = fused_plan(&g, &Bindings::new(), &opts);
    let kernels: Vec<&Kernel> = plan.launches.values().map(|l| &l.kernel).collect();
    let [Kernel::MatMul { split_k: Some(splits), a_split: Some(300), epilogue: None, .. }, Kernel::Elementwise { offsets, .. }] =
        kernels[..]
    else {
        panic!("a split GEMM reading the concatenation in parts, then the sum: {kernels:?}")
    };
    assert_eq!(*splits, 4, "the most shares");
    assert_eq!(offsets[..*splits as usize], (0..*splits as u64).map(|s| s * 37 * 45).collect::<Vec<_>>()[..]);
    check_fused_lowered(&g, &feeds, &ParamStore::init(&g, 7), 1e-4, &opts);
    // Unsplit where the device is asked not to, and on lavapipe's GEMMs.
    for opts in [LowerOptions { split_k: false, ..LowerOptions::gpu() }, LowerOptions::default()] {
        let plan = fused_plan(&g, &Bindings::new(), &opts);
        let gemms: Vec<_> = plan.launches.values().filter(|l| matches!(l.kernel, Kernel::MatMul { .. })).collect();
        assert!(matches!(gemms[..], [l] if matches!(l.kernel, Kernel::MatMul { split_k: None, .. })), "{gemms:?}");
    }
}

#[test]
fn grouped_gemms_work_in_every_gemm_variant() {
    use calm_passes::lower::GemmStrategy;
    use calm_passes::plan::GemmTile;
    // Widths that are no multiple of 4 push the lowering off the vector GEMM onto the register
    // one; the shared-tile GEMM (GPUs) is asked for explicitly. Two expert layers: the second
    // layer's first norm reads the first layer's rows, not the units'.
    let mut cfg = CalmConfig::preset("tiny").unwrap();
    (cfg.width, cfg.heads, cfg.expert_ffn, cfg.experts, cfg.top_k, cfg.expert_layers) = (30, 3, 18, 3, 2, 2);
    let g = calm_models::build(&cfg, calm_models::Mode::Inference).unwrap();
    let b = Bindings::new().with("batch", 5).with("tokens", 4);
    let feeds = random_inputs(&g, &b, 3).unwrap();
    let params = ParamStore::init(&g, 7);
    for strategy in [GemmStrategy::Registers, GemmStrategy::SharedTiles(GemmTile::DEFAULT)] {
        let opts = LowerOptions { gemm: strategy, ..LowerOptions::default() };
        let log = check_fused_lowered(&g, &feeds, &params, 1e-4, &opts);
        // The mixture, its routers, and its groups joined.
        assert_eq!(fired(&log, "fuse_experts"), 3, "{:?}", log.notes);
        let plan = fused_plan(&g, &b, &opts);
        let grouped: Vec<Gemm> = plan
            .launches
            .values()
            .filter_map(|l| match &l.kernel {
                Kernel::MatMul { gemm, grouped: Some(_), .. } => Some(*gemm),
                _ => None,
            })
            .collect();
        assert!(!grouped.is_empty());
        let expected = |g: &Gemm| match strategy {
            GemmStrategy::Registers => matches!(g, Gemm::Registers { .. }),
            GemmStrategy::SharedTiles(_) => matches!(g, Gemm::SharedTiles(_)),
        };
        assert!(grouped.iter().all(expected), "{grouped:?}");
        // Shared tiles fold every expert's slots into full tiles; the register GEMM keeps a
        // slot per batch entry.
        let folds = plan.launches.values().filter_map(|l| match &l.kernel {
            Kernel::MatMul { grouped: Some(gr), .. } => Some(gr.fold_experts),
            _ => None,
        });
        let want = matches!(strategy, GemmStrategy::SharedTiles(_)).then_some(6);
        assert!(folds.into_iter().all(|f| f == want), "2 dimensions of 3 experts");
        // Folded, the GEMMs after each layer norm read their rows through it, but for the
        // first layer's, which gathers each slot's rows from its unit: one norm launch left.
        let norms = plan.launches.values().filter(|l| matches!(l.kernel, Kernel::LayerNorm { grouped: Some(_), .. }));
        let normed = plan.launches.values().filter(|l| matches!(l.kernel, Kernel::MatMul { a_norm: Some(_), .. }));
        let layers = cfg.expert_layers as usize;
        let fused = if matches!(strategy, GemmStrategy::SharedTiles(_)) { 2 * layers - 1 } else { 0 };
        assert_eq!((norms.count(), normed.count()), (2 * layers - fused, fused), "{strategy:?}, {layers} layers");
    }
}

/// Masked means (CALM's pooling of the states), a max and a mean over two axes of elementwise
/// chains, at awkward sizes with empty and one-token masks.
fn reductions_graph(product_is_output: bool) -> Graph {
    let mut b = GraphBuilder::new("reductions");
    let x = b.input("x", F, shape![7u64, 33u64, 130u64]).unwrap();
    let mask = b.input("mask", F, shape![7u64, 33u64]).unwrap();
    let mean = nn::masked_mean(&mut b, x, mask).unwrap();
    let e = b.exp(x).unwrap();
    let max = b.reduce_max(e, &[2], false).unwrap();
    let xx = b.mul(x, x).unwrap();
    let squares = b.reduce_mean(xx, &[0, 2], true).unwrap();
    b.output("mean", mean);
    b.output("max", max);
    b.output("squares", squares);
    if product_is_output {
        b.output("xx", xx);
    }
    b.finish().unwrap()
}

#[test]
fn reductions_evaluate_their_elementwise_inputs_in_place() {
    let g = reductions_graph(false);
    let mut feeds = random_inputs(&g, &Bindings::new(), 5).unwrap();
    awkward_mask(&mut feeds, 7, 33, true);
    let log = check_fused(&g, &feeds, 1e-5);
    assert_eq!(fired(&log, "fuse_reduce_prologues"), 3, "{:?}", log.notes);
    let plan = fused_plan(&g, &Bindings::new(), &LowerOptions::default());
    let names: Vec<&str> = plan.launches.values().map(|l| l.kernel.name()).collect();
    for kernel in ["elementwise+reduce_sum", "elementwise+reduce_max", "elementwise+reduce_mean", "reduce_mean"] {
        assert!(names.contains(&kernel), "{kernel} in {names:?}");
    }
    // No launch writes a product of the states' size.
    let big = 7 * 33 * 130;
    assert!(plan.launches.values().all(|l| l.writes.iter().all(|&w| plan.buffers[w].len < big)), "{names:?}");
}

#[test]
fn reductions_with_prologues_in_a_cube_per_line() {
    // The GPU form of the row kernels: the max over the last axis (130, with its exp
    // prologue) in a cube per line; the masked mean over tokens (not the last axis) keeps a
    // thread per line.
    let g = reductions_graph(false);
    let mut feeds = random_inputs(&g, &Bindings::new(), 8).unwrap();
    awkward_mask(&mut feeds, 7, 33, true);
    let opts = LowerOptions { row_threads: Some(64), ..LowerOptions::default() };
    check_fused_lowered(&g, &feeds, &ParamStore::init(&g, 7), 1e-5, &opts);
    let plan = fused_plan(&g, &Bindings::new(), &opts);
    let cubes: Vec<(&str, Option<u32>, u64)> = plan
        .launches
        .values()
        .filter_map(|l| match &l.kernel {
            Kernel::Reduce { row_cube, inner, .. } => Some((l.kernel.name(), *row_cube, *inner)),
            _ => None,
        })
        .collect();
    assert!(cubes.contains(&("elementwise+reduce_max", Some(64), 1)), "{cubes:?}");
    assert!(cubes.iter().all(|&(_, cube, inner)| cube.is_none() == (inner != 1)), "{cubes:?}");
}

#[test]
fn reductions_of_products_read_elsewhere_decline() {
    let g = reductions_graph(true);
    let feeds = random_inputs(&g, &Bindings::new(), 6).unwrap();
    let log = check_fused(&g, &feeds, 1e-5);
    assert_eq!(fired(&log, "fuse_reduce_prologues"), 2, "{:?}", log.notes);
    assert_eq!(declined(&log, "fuse_reduce_prologues"), ["the product is read elsewhere"]);
}
