//! `calm run` end to end: random and file inputs, weights, outputs written and read back.

mod common;

use std::path::Path;
use std::process::Command;

use common::{output, s};

use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::FloatDType;
use calm::ir::{json, Bindings};
use calm::models::{build, CalmConfig, Mode};
use calm::runtime::inputs::random_inputs;
use calm::runtime::params::ParamStore;
use calm::runtime::reference::Reference;
use calm::runtime::safetensors;

fn calm(args: &[&str]) -> (bool, String, String) {
    output(Command::new(env!("CARGO_BIN_EXE_calm")).args(args))
}

#[test]
fn run_summarises_every_output_and_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let g = build(&CalmConfig::preset("tiny").unwrap(), Mode::Training).unwrap();
    let graph = dir.path().join("g.json");
    json::write_file(&g, &graph).unwrap();
    let out = dir.path().join("out.safetensors");
    let (ok, stdout, stderr) = calm(&[
        "run",
        s(&graph),
        "--bind",
        "batch=6,tokens=5",
        "--seed",
        "2",
        "-o",
        s(&out),
        "--executor",
        "reference",
    ]);
    assert!(ok, "{stderr}");
    for o in &g.outputs {
        let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(o.name.as_str()));
        let line = line.unwrap_or_else(|| panic!("no summary line for `{}`: {stdout}", o.name));
        assert!(line.ends_with("    0     0"), "finite: {line}");
    }
    let written = safetensors::read(&out).unwrap();
    assert_eq!(written.len(), g.outputs.len());
    assert_eq!(written["logits"].shape, [6, 2]);
    // Same seed, same numbers; the library gives them too.
    let params = ParamStore::init(&g, 2);
    let inputs = random_inputs(&g, &Bindings::new().with("batch", 6).with("tokens", 5), 2).unwrap();
    let direct = Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(&g, &params, &inputs).unwrap();
    assert_eq!(direct, written);
}

#[test]
fn run_takes_weights_and_inputs_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let g = build(&CalmConfig::preset("tiny").unwrap(), Mode::Inference).unwrap();
    let graph = dir.path().join("g.json");
    json::write_file(&g, &graph).unwrap();
    let weights = dir.path().join("w.safetensors");
    ParamStore::init(&g, 7).save(&weights).unwrap();
    let inputs = dir.path().join("in.safetensors");
    let feeds = random_inputs(&g, &Bindings::new().with("batch", 3).with("tokens", 4), 3).unwrap();
    safetensors::write(&inputs, &feeds).unwrap();
    let out = dir.path().join("out.safetensors");
    let (ok, stdout, stderr) = calm(&[
        "run",
        s(&graph),
        "--weights",
        s(&weights),
        "--inputs",
        s(&inputs),
        "-o",
        s(&out),
        "--executor",
        "reference",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("w.safetensors") && stdout.contains("in.safetensors"), "{stdout}");
    let direct = Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(&g, &ParamStore::init(&g, 7), &feeds).unwrap();
    assert_eq!(safetensors::read(&out).unwrap(), direct);

    // Weights of another graph: one line naming the file and what is wrong; no output written.
    let other = build(&CalmConfig { clusters: 4, ..CalmConfig::preset("tiny").unwrap() }, Mode::Inference).unwrap();
    let wrong = dir.path().join("wrong.safetensors");
    ParamStore::init(&other, 0).save(&wrong).unwrap();
    let out2 = dir.path().join("out2.safetensors");
    let (ok, _, stderr) = calm(&["run", s(&graph), "--weights", s(&wrong), "--inputs", s(&inputs), "-o", s(&out2)]);
    assert!(!ok && stderr.lines().count() == 1, "{stderr}");
    assert!(
        stderr.contains("wrong.safetensors") && stderr.contains("has shape [4, 16], the graph wants [3, 16]"),
        "{stderr}"
    );
    assert!(!out2.exists());

    // Inputs missing one tensor.
    let mut partial = feeds.clone();
    partial.remove("culture");
    safetensors::write(&inputs, &partial).unwrap();
    let (ok, _, stderr) = calm(&["run", s(&graph), "--inputs", s(&inputs)]);
    assert!(!ok && stderr.contains("missing input: culture"), "{stderr}");
}

#[test]
fn fused_executor_compiles_runs_and_compares() {
    let dir = tempfile::tempdir().unwrap();
    let g = build(&CalmConfig::preset("tiny").unwrap(), Mode::Training).unwrap();
    let graph = dir.path().join("g.json");
    json::write_file(&g, &graph).unwrap();
    let (ok, stdout, stderr) =
        calm(&["run", s(&graph), "--bind", "batch=6,tokens=5", "--executor", "fused", "--compare"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("kernel launches on wgpu"), "{stdout}");
    for o in &g.outputs {
        let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(o.name.as_str())).unwrap();
        let err: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!(err < 1e-4, "{line}");
    }
    // The compile summary counts launches before and after fusion.
    let (ok, stdout, stderr) = calm(&["compile", s(&graph), "--bind", "batch=6,tokens=5"]);
    assert!(ok, "{stderr}");
    let count = |label: &str| -> usize {
        stdout.lines().find(|l| l.starts_with(label)).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(count("fused") < count("unfused"), "{stdout}");
    assert!(stdout.contains("memory:"), "{stdout}");
    // The fusion report names what fired, grouping numbered scopes.
    let (ok, fusions, stderr) = calm(&["compile", s(&graph), "--bind", "batch=6,tokens=5", "--emit", "fusions"]);
    assert!(ok, "{stderr}");
    for pass in ["fuse_gumbel_pool", "fuse_attention", "fuse_route", "fuse_experts", "fuse_projections"] {
        assert!(fusions.lines().any(|l| l.trim_start().starts_with(pass)), "{pass} missing: {fusions}");
    }
    assert!(fusions.contains("calm/moe/dim*/expert*/layer*/attention ("), "{fusions}");
    let (ok, plan, _) = calm(&["compile", s(&graph), "--bind", "batch=6,tokens=5", "--emit", "plan"]);
    assert!(ok);
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    // Format 3 (typed ids, port dtypes, the precision it was lowered under); older are refused.
    assert_eq!(plan["format"], "calm-plan/3");
    assert_eq!(plan["precision"], "highest");
    assert_eq!(plan["launches"].as_array().unwrap().len(), count("fused"));
    // --precision is recorded in the plan; for the wgpu target (lavapipe's lowering, no tensor
    // cores) every setting gives the same kernels.
    let (ok, high, _) =
        calm(&["compile", s(&graph), "--bind", "batch=6,tokens=5", "--emit", "plan", "--precision", "high"]);
    let high: serde_json::Value = serde_json::from_str(&high).unwrap();
    assert!(ok && high["precision"] == "high", "{high}");
    assert_eq!(high["launches"], plan["launches"], "lavapipe's kernels at every precision");
    // Unbound symbols and a device that cannot start are one-line errors.
    let (ok, _, stderr) = calm(&["compile", s(&graph)]);
    assert!(!ok && stderr.contains("symbols unbound: batch, tokens"), "{stderr}");
    // On CUDA the fused plan must match the reference; without it, one line says why.
    let (ok, stdout, stderr) = calm(&["run", s(&graph), "--bind", "batch=2,tokens=2", "--device", "cuda", "--compare"]);
    if ok {
        for o in &g.outputs {
            let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(o.name.as_str()));
            let err: f64 = line.and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(f64::NAN);
            assert!(err < 1e-4, "`{}` on CUDA against the reference: {stdout}", o.name);
        }
    } else {
        assert!(stderr.contains("CUDA did not start") && stderr.lines().count() == 1, "{stderr}");
    }
}

/// `calm` with `CALM_HOME` set (the device-peak cache lives there).
fn calm_at(home: &Path, args: &[&str]) -> (bool, String, String) {
    output(Command::new(env!("CARGO_BIN_EXE_calm")).env("CALM_HOME", home).args(args))
}

#[test]
fn profile_times_every_launch_and_writes_json_trace_and_roofline() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (json_out, trace, plot) = (dir.path().join("p.json"), dir.path().join("t.json"), dir.path().join("r.svg"));
    let args = [
        "profile",
        "--preset",
        "tiny",
        "--bind",
        "batch=2,tokens=3",
        "--iters",
        "1",
        "--device",
        "wgpu",
        "--json",
        s(&json_out),
        "--trace",
        s(&trace),
        "--plot",
        s(&plot),
    ];
    let (ok, stdout, stderr) = calm_at(&home, &args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("fp32-cores") && stdout.contains("measured now"), "{stdout}");
    assert!(stdout.contains("precision highest") && stdout.contains("modelled ms"), "{stdout}");
    for peer in ["calm fused", "calm unfused", "burn wgpu (fusion)", "burn flex (cpu)", "calm reference on flex"] {
        assert!(stdout.contains(peer), "{peer} missing: {stdout}");
    }
    // Burn's CUDA backend is a row where CUDA answers, else one line saying why not.
    let cuda = stdout.lines().filter(|l| l.contains("burn cuda (fusion)")).collect::<Vec<_>>();
    assert_eq!(cuda.len(), 1, "{stdout}");
    assert!(cuda[0].contains("x calm fused") || cuda[0].contains("skipped, "), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    let launches = report["launches"].as_array().unwrap();
    // As many launches as the compiled plan has, each named and timed.
    let g = dir.path().join("g.json");
    assert!(calm(&["build", "--preset", "tiny", "-o", s(&g)]).0);
    let (_, plan, _) = calm(&["compile", s(&g), "--bind", "batch=2,tokens=3", "--emit", "plan"]);
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(launches.len(), plan["launches"].as_array().unwrap().len());
    for l in launches {
        assert!(l["kernel"].is_string() && l["seconds"].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!(l["unit"], "fp32-cores", "{l}");
        assert!(l["modelled_seconds"].as_f64().unwrap() > 0.0, "{l}");
    }
    assert_eq!(report["precision"], "highest");
    // The whole forward on lavapipe's own clock (timestamp queries).
    assert!(report["forward_seconds"].as_f64().unwrap() > 0.0 && report["forward_timer"] == "device", "{report}");
    assert!(stdout.contains("whole forward, launches back to back"), "{stdout}");
    assert!(report["ceilings"]["flops_per_s"]["fp32-cores"].as_f64().unwrap() > 0.0, "{report}");
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(events, launches.len());
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    // The second run reads the cached peaks.
    let (ok, stdout, stderr) = calm_at(
        &home,
        &[
            "profile",
            "--preset",
            "tiny",
            "--bind",
            "batch=2,tokens=3",
            "--iters",
            "1",
            "--no-peers",
            "--device",
            "wgpu",
        ],
    );
    assert!(ok && stdout.contains("cached in"), "{stdout}{stderr}");
    assert!(!stdout.contains("calm unfused"), "--no-peers: {stdout}");
}

#[test]
fn profile_models_the_qwen_head_on_an_h200() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "profile",
        "--preset",
        "paper",
        "--backbone",
        "qwen3-32b-states",
        "--bind",
        "batch=64,tokens=512",
        "--model",
        "h200",
    ];
    let (ok, stdout, stderr) = calm_at(dir.path(), &args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("MODELLED, not measured"), "{stdout}");
    // The model's table, with sources; the GEMMs on the FP32 pipelines, as they run.
    assert!(
        stdout.contains("fp32-cores") && stdout.contains("67.0 TFLOP/s") && stdout.contains("datasheet"),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("matmul") && l.contains("fp32-cores")), "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("matmul") && l.contains("tensor-")), "{stdout}");
    let ms = |plan: &str| -> f64 {
        let line = stdout.lines().find(|l| l.starts_with(plan)).unwrap_or_else(|| panic!("no {plan} row: {stdout}"));
        line.split_whitespace().rev().nth(1).unwrap().parse().unwrap()
    };
    assert!(ms("fused") < ms("unfused"), "{stdout}");
    // bf16 buffers: the GEMMs on the bf16 tensor cores, and the modelled head faster.
    let (ok, bf16, stderr) = calm_at(dir.path(), &[&args[..], &["--float", "bf16"]].concat());
    assert!(ok, "{stderr}");
    assert!(bf16.lines().any(|l| l.starts_with("matmul") && l.contains("tensor-bf16")), "{bf16}");
    let fused_bf16: f64 = bf16
        .lines()
        .find(|l| l.starts_with("fused"))
        .and_then(|l| l.split_whitespace().rev().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no fused row: {bf16}"));
    assert!(fused_bf16 < ms("fused"), "{bf16}");
    // The GEMMs of few tiles split k, each then summed by a launch of its own; --no-split-k
    // keeps them whole.
    let launches = |out: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with("fused ")).unwrap_or_else(|| panic!("no fused row: {out}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (ok, whole, stderr) = calm_at(dir.path(), &[&args[..], &["--no-split-k"]].concat());
    assert!(ok, "{stderr}");
    assert!(launches(&whole) < launches(&stdout), "{whole}\n{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("matmul ")), "GEMMs without their epilogue: {stdout}");
}

#[test]
fn compile_writes_the_cuda_source_of_every_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.json");
    assert!(calm(&["build", "--preset", "tiny", "-o", s(&g)]).0);
    let out = dir.path().join("cuda");
    let (ok, stdout, stderr) =
        calm(&["compile", s(&g), "--bind", "batch=2,tokens=3", "--target", "cuda", "--emit", "cuda", s(&out)]);
    assert!(ok, "{stderr}");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("kernels.json")).unwrap()).unwrap();
    let kernels = index["kernels"].as_array().unwrap();
    assert!(stdout.contains(&format!("wrote {} CUDA kernels", kernels.len())), "{stdout}");
    for k in kernels {
        let source = std::fs::read_to_string(out.join(format!("{}.cu", k["name"].as_str().unwrap()))).unwrap();
        assert!(source.contains("#include <cuda_runtime.h>") && source.contains("__global__"), "{k}");
    }
    // f32 under the default precision (`highest`): every kernel on the FP32 pipelines. bf16
    // buffers: the GEMMs on Hopper's bf16 tensor cores (wmma products in their source).
    assert!(kernels.iter().all(|k| k["unit"] == "fp32-cores"), "{index}");
    let bf16 = dir.path().join("bf16");
    let args = ["compile", s(&g), "--bind", "batch=2,tokens=3", "--target", "cuda", "--float", "bf16"];
    let (ok, _, stderr) = calm(&[&args[..], &["--emit", "cuda", s(&bf16)]].concat());
    assert!(ok, "{stderr}");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(bf16.join("kernels.json")).unwrap()).unwrap();
    let kernels = index["kernels"].as_array().unwrap();
    let tensor: Vec<&serde_json::Value> = kernels.iter().filter(|k| k["unit"] == "tensor-bf16").collect();
    assert!(!tensor.is_empty(), "{index}");
    for k in &tensor {
        assert!(k["plan_kernel"].as_str().unwrap().starts_with("matmul"), "{k}");
        let source = std::fs::read_to_string(bf16.join(format!("{}.cu", k["name"].as_str().unwrap()))).unwrap();
        assert!(source.contains("wmma::mma_sync"), "{k}");
    }
    // CUDA output needs the CUDA target, and a folder.
    let (ok, _, stderr) = calm(&["compile", s(&g), "--bind", "batch=2,tokens=3", "--emit", "cuda", s(&out)]);
    assert!(!ok && stderr.contains("add --target cuda"), "{stderr}");
    let (ok, _, stderr) = calm(&["compile", s(&g), "--bind", "batch=2,tokens=3", "--target", "cuda", "--emit", "ptx"]);
    assert!(!ok && stderr.contains("--emit ptx needs a folder"), "{stderr}");
}
