//! The `calm` command line, end to end: graphs written by the test, read by the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use calm::ir::json::{to_json, write_file};
use calm::ir::sample::tiny_classifier;
use serde_json::Value;

fn calm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calm")).args(args).output().expect("calm runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = calm(args);
    assert!(o.status.success(), "calm {args:?} failed: {}", stderr(&o));
    stdout(&o)
}

/// Runs a command that must fail: exit code 1 and exactly one line on stderr, which is returned.
fn fails(args: &[&str]) -> String {
    let o = calm(args);
    assert_eq!(o.status.code(), Some(1), "calm {args:?} should fail: {}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line of reason, got: {err}");
    assert!(err.starts_with("calm: error: "), "{err}");
    assert!(stdout(&o).is_empty(), "nothing on stdout when failing: {}", stdout(&o));
    err
}

/// A scratch directory, removed when the test ends.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        Scratch(tempfile::tempdir().expect("temp dir"))
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_show_and_stats_on_a_graph_written_by_the_test() {
    let dir = Scratch::new();
    let path = dir.path("good.json");
    let g = tiny_classifier();
    write_file(&g, &path).unwrap();

    let out = ok(&["check", s(&path)]);
    assert!(out.starts_with("ok: "), "{out}");
    assert!(out.contains(&format!("{} nodes", g.nodes.len())), "{out}");

    let summary = ok(&["show", s(&path)]);
    assert!(summary.contains("inputs:") && summary.contains("labels") && summary.contains("i32[batch]"), "{summary}");
    let listing = ok(&["show", s(&path), "--format", "text"]);
    assert_eq!(listing.lines().count(), g.nodes.len() + g.outputs.len());
    // The JSON form printed is the canonical file, byte for byte.
    assert_eq!(ok(&["show", s(&path), "--format", "json"]), std::fs::read_to_string(&path).unwrap());
    let dot = ok(&["show", s(&path), "--format", "dot"]);
    assert!(dot.starts_with("digraph") && dot.contains("cluster_tiny/block"), "{dot}");

    let stats = ok(&["stats", s(&path), "--bind", "batch=64,tokens=128"]);
    let lines: Vec<&str> = stats.lines().collect();
    assert!(lines[0].contains("batch=64,tokens=128"), "{stats}");
    assert!(lines[2].starts_with("tiny ") && lines[2].contains("4,931"), "{stats}");
    assert!(stats.contains("  block"), "{stats}");

    let json: Value =
        serde_json::from_str(&ok(&["stats", s(&path), "--bind", "batch=2,tokens=3", "--json", "--depth", "1"]))
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["params"], g.param_count());
    assert!(rows[0]["flops"].as_u64().unwrap() > 0);
}

#[test]
fn stats_needs_every_symbol_bound() {
    let dir = Scratch::new();
    let path = dir.path("stats.json");
    write_file(&tiny_classifier(), &path).unwrap();
    let err = fails(&["stats", s(&path)]);
    assert!(err.contains("batch, tokens") && err.contains("--bind"), "{err}");
    let err = fails(&["stats", s(&path), "--bind", "batch=4"]);
    assert!(err.contains("symbol unbound: tokens"), "{err}");
    let err = fails(&["stats", s(&path), "--bind", "batch=four"]);
    assert!(err.contains("bad binding `batch=four`"), "{err}");
    // Absurd sizes overflow cleanly instead of wrapping or aborting.
    let huge = format!("batch={},tokens={}", u64::MAX / 2, u64::MAX / 2);
    let err = fails(&["stats", s(&path), "--bind", &huge]);
    assert!(err.contains("overflows"), "{err}");
}

#[test]
fn sample_writes_a_valid_graph() {
    let dir = Scratch::new();
    let path = dir.path("sample.json");
    ok(&["sample", "-o", s(&path)]);
    assert!(ok(&["check", s(&path)]).starts_with("ok: "));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), to_json(&tiny_classifier()));
    let err = fails(&["sample", "-o", s(&dir.path("no/such/dir/x.json"))]);
    assert!(err.contains("cannot write"), "{err}");
}

/// Writes the sample graph after `edit` to a file and returns `calm check`'s error line.
fn check_error(dir: &Scratch, name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut doc: Value = serde_json::from_str(&to_json(&tiny_classifier())).unwrap();
    edit(&mut doc);
    let path = dir.path(name);
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let err = fails(&["check", s(&path)]);
    assert!(err.contains(name), "the error names the file: {err}");
    err
}

fn node<'a>(doc: &'a mut Value, op: &str) -> &'a mut Value {
    doc["nodes"].as_array_mut().unwrap().iter_mut().find(|n| n["op"] == op).unwrap()
}

#[test]
fn check_fails_cleanly_on_each_bad_file() {
    let dir = Scratch::new();
    let truncated = dir.path("truncated.json");
    let text = to_json(&tiny_classifier());
    std::fs::write(&truncated, &text[..text.len() / 3]).unwrap();
    let err = fails(&["check", s(&truncated)]);
    assert!(err.contains("not valid JSON at line"), "{err}");

    let err = fails(&["check", s(&dir.path("does-not-exist.json"))]);
    assert!(err.contains("cannot read"), "{err}");

    let err = check_error(&dir, "unknown-op.json", |d| node(d, "gelu")["op"] = "swish".into());
    assert!(err.contains("unknown op `swish`"), "{err}");

    let err = check_error(&dir, "version.json", |d| d["format"] = "calm-ir/9".into());
    assert!(err.contains("calm-ir/9") && err.contains("calm-ir/1"), "{err}");

    let err = check_error(&dir, "dangling.json", |d| node(d, "gelu")["args"][0] = "v4242".into());
    assert!(err.contains("`v4242` is not defined"), "{err}");

    let err = check_error(&dir, "cycle.json", |d| {
        let ln = node(d, "layer_norm")["results"][0]["id"].clone();
        node(d, "gelu")["args"][0] = ln;
    });
    assert!(err.contains("cycle"), "{err}");

    let err = check_error(&dir, "shape.json", |d| node(d, "gelu")["results"][0]["shape"][2] = 31.into());
    assert!(err.contains("(gelu @ tiny/block)") && err.contains("f32[batch,tokens,31]"), "{err}");

    let err = check_error(&dir, "dtype.json", |d| {
        let x = node(d, "input");
        x["attrs"]["dtype"] = "f16".into();
        x["results"][0]["dtype"] = "f16".into();
    });
    assert!(err.contains("dtype mismatch") && err.contains("matmul @ tiny/block/proj"), "{err}");

    let err = check_error(&dir, "dup-param.json", |d| {
        let nodes = d["nodes"].as_array_mut().unwrap();
        let params: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i]["op"] == "param").collect();
        let name = nodes[params[0]]["attrs"]["name"].clone();
        nodes[params[1]]["attrs"]["name"] = name;
    });
    assert!(err.contains("parameter name `tiny/block/proj/weight` is already used"), "{err}");

    let err = check_error(&dir, "zero-dim.json", |d| node(d, "input")["results"][0]["shape"][2] = 0.into());
    assert!(err.contains("dimension 0 is not positive"), "{err}");
    let err = check_error(&dir, "negative-dim.json", |d| node(d, "input")["attrs"]["shape"][2] = (-16).into());
    assert!(err.contains("dimension -16 is not positive"), "{err}");

    let err = check_error(&dir, "unbound.json", |d| {
        let p = node(d, "param");
        p["attrs"]["shape"][1] = "width".into();
        p["results"][0]["shape"][1] = "width".into();
    });
    assert!(err.contains("symbol `width`") && err.contains("fixed sizes"), "{err}");
}

#[test]
fn build_ablate_diff_and_render_calm() {
    let dir = Scratch::new();
    let full = dir.path("calm.json");
    let out = ok(&["build", "--preset", "paper", "-o", s(&full)]);
    assert!(out.contains("inference graph") && out.contains("106,933,788 parameters"), "{out}");
    assert!(ok(&["check", s(&full)]).starts_with("ok: "));

    // A variant built directly equals the full graph ablated afterwards.
    let direct = dir.path("no-moe-direct.json");
    ok(&["build", "--variant", "no-moe", "-o", s(&direct)]);
    let ablated = dir.path("no-moe.json");
    let out = ok(&["ablate", s(&full), "--drop", "no-moe", "-o", s(&ablated)]);
    assert!(out.contains("dropped no-moe"), "{out}");
    assert_eq!(std::fs::read_to_string(&direct).unwrap(), std::fs::read_to_string(&ablated).unwrap());

    let diff = ok(&["diff", s(&full), s(&ablated), "--depth", "2", "--params"]);
    assert!(diff.starts_with("parameters 106,933,788 -> "), "{diff}");
    assert!(diff.contains("calm/moe") && diff.contains("- calm/moe/dim0/router/weight f32[4,512]"), "{diff}");
    assert!(diff.contains("+ calm/moe/mlp/l1/weight f32[512,512]"), "{diff}");
    assert_eq!(ok(&["diff", s(&full), s(&full)]), "no differences\n");

    // Dropping it again is a clear error, and no output file is written.
    let again = dir.path("again.json");
    let err = fails(&["ablate", s(&ablated), "--drop", "no-moe", "-o", s(&again)]);
    assert!(err.contains("`no-moe` does not apply"), "{err}");
    assert!(!again.exists());
    let err = fails(&["ablate", s(&full), "--drop", "no-everything", "-o", s(&again)]);
    assert!(err.contains("unknown ablation `no-everything`"), "{err}");

    let dot = ok(&["show", s(&ablated), "--format", "dot"]);
    assert!(dot.contains("cluster_calm/identity_pool/cross_attention"), "DOT clusters by scope");
}

#[test]
fn build_options_and_their_errors() {
    let dir = Scratch::new();
    let train = dir.path("train.json");
    let out = ok(&["build", "--preset", "tiny", "--train", "--variant", "no-gumbel,no-reflection", "-o", s(&train)]);
    assert!(out.contains("training graph without no-gumbel, no-reflection"), "{out}");
    let summary = ok(&["show", s(&train)]);
    assert!(summary.contains("loss_con") && !summary.contains("loss_ref"), "{summary}");

    // A training-only ablation on an inference build is noted on stderr, not fatal.
    let o = calm(&["build", "--variant", "no-contrastive", "-o", s(&dir.path("inf.json"))]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("changes only the training graph"), "{}", stderr(&o));

    let minilm = dir.path("minilm.json");
    ok(&["build", "--backbone", "minilm-l6", "-o", s(&minilm)]);
    let summary = ok(&["show", s(&minilm)]);
    assert!(summary.contains("input_ids") && summary.contains("i32[batch,tokens]"), "{summary}");

    let err = fails(&["build", "--backbone", "gpt", "-o", s(&dir.path("x.json"))]);
    assert!(err.contains("unknown backbone `gpt`"), "{err}");
    let err = fails(&["build", "--preset", "huge", "-o", s(&dir.path("x.json"))]);
    assert!(err.contains("unknown preset `huge`"), "{err}");

    // A config file: the preset printed as TOML, edited, read back.
    let toml = ok(&["preset", "tiny"]);
    let cfg = dir.path("cfg.toml");
    std::fs::write(&cfg, toml.replace("clusters = 3", "clusters = 4")).unwrap();
    let g = dir.path("cfg.json");
    ok(&["build", "--config", s(&cfg), "-o", s(&g)]);
    assert!(ok(&["show", s(&g)]).contains("assign_e                 f32[batch,tokens,4]"));
    std::fs::write(&cfg, "clusters = 0\n").unwrap();
    let err = fails(&["build", "--config", s(&cfg), "-o", s(&g)]);
    assert!(err.contains("config field `clusters`"), "{err}");

    let list = ok(&["ablations"]);
    assert_eq!(list.lines().count(), 9);
    assert!(list.lines().all(|l| l.starts_with("no-") || l.starts_with("dense-moe")), "{list}");
}
