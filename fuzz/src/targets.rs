//! The fuzz targets: each takes arbitrary bytes to one of calm's readers, which must answer with
//! a value or a typed error, never a panic, and checks what it can of an accepted value
//! (round trips, invariants). A panic, from the reader or from a check here, is a finding.

use std::path::Path;

use calm_ir::json;
#[cfg(feature = "runtime")]
use calm_runtime::safetensors;

/// What a target did with an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Refused with this error message (its first 48 characters tell error kinds apart).
    Refused(String),
}

/// The readers under fuzzing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `calm-ir/1` graph JSON through the reader and the verifier, then printed and re-read.
    IrJson,
    /// A safetensors file (weights, inputs, checkpoints), then written and re-read.
    #[cfg(feature = "runtime")]
    Safetensors,
    /// A CREHate split (CSV).
    Crehate,
    /// A generic table, CSV or JSONL (the first byte picks), with columns text/culture/label.
    Table,
    /// A model config, TOML or JSON (the first byte picks), then both CALM graphs built.
    Config,
    /// `--bind` text (`NAME=N,...`), then printed and re-read, and a graph's costs under it.
    Bind,
    /// A training checkpoint (`calm train --resume`, `calm eval --checkpoint`): its run state,
    /// its config (the model is rebuilt from it), weights and AdamW moments.
    #[cfg(feature = "runtime")]
    Checkpoint,
}

impl Target {
    pub const ALL: &[Target] = &[
        Target::IrJson,
        #[cfg(feature = "runtime")]
        Target::Safetensors,
        Target::Crehate,
        Target::Table,
        Target::Config,
        Target::Bind,
        #[cfg(feature = "runtime")]
        Target::Checkpoint,
    ];

    /// The target's name: its corpus folder, its libFuzzer target.
    pub fn name(self) -> &'static str {
        match self {
            Target::IrJson => "ir-json",
            #[cfg(feature = "runtime")]
            Target::Safetensors => "safetensors",
            Target::Crehate => "crehate",
            Target::Table => "table",
            Target::Config => "config",
            Target::Bind => "bind",
            #[cfg(feature = "runtime")]
            Target::Checkpoint => "checkpoint",
        }
    }

    /// Runs the target on `data`. Readers that take a path get a file in `scratch`.
    pub fn run(self, data: &[u8], scratch: &Path) -> Outcome {
        let result = match self {
            Target::IrJson => ir_json(data),
            #[cfg(feature = "runtime")]
            Target::Safetensors => with_file(scratch, "x.safetensors", data, safetensors_file),
            Target::Crehate => with_file(scratch, "x.csv", data, |p| {
                calm_data::load_crehate(p).map(check_dataset).map_err(|e| e.to_string())
            }),
            Target::Table => {
                let name = if data.first() == Some(&b'{') { "x.jsonl" } else { "x.csv" };
                with_file(scratch, name, data, table_file)
            }
            Target::Config => {
                let name = if data.first() == Some(&b'{') { "x.json" } else { "x.toml" };
                with_file(scratch, name, data, config_file)
            }
            Target::Bind => bind(data),
            #[cfg(feature = "runtime")]
            Target::Checkpoint => with_file(scratch, "last.safetensors", data, |p| {
                calm_train::checkpoint::Checkpoint::load(p).map(|_| ()).map_err(|e| e.to_string())
            }),
        };
        match result {
            Ok(()) => Outcome::Accepted,
            Err(message) => {
                assert!(!message.trim().is_empty(), "{}: an error without a message", self.name());
                Outcome::Refused(message)
            }
        }
    }
}

impl Target {
    /// [`Target::run`] with a scratch folder made once per process (for libFuzzer's loop).
    pub fn run_in_scratch(self, data: &[u8]) -> Outcome {
        static SCRATCH: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        self.run(data, SCRATCH.get_or_init(|| tempfile::tempdir().expect("a temporary folder")).path())
    }
}

fn with_file(
    scratch: &Path,
    name: &str,
    data: &[u8],
    read: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let path = scratch.join(name);
    std::fs::write(&path, data).expect("the scratch folder is writable");
    read(&path)
}

fn bind(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let bindings: calm_ir::Bindings = text.parse().map_err(|e: calm_ir::types::ShapeError| e.to_string())?;
    let again = bindings.to_string();
    let reread: calm_ir::Bindings = again.parse().unwrap_or_else(|e| panic!("`{again}` does not read back: {e}"));
    assert_eq!(reread.to_string(), again, "--bind round trip changed the bindings");
    // Any sizes, however large, give costs or a typed error, and a plan or a typed error.
    let g = calm_ir::sample::tiny_classifier();
    let _ = calm_ir::cost::graph_costs(&g, &bindings);
    let _ = calm_passes::compile::compile(&g, &bindings, true, &calm_passes::lower::LowerOptions::default());
    Ok(())
}

fn ir_json(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let g = json::from_json(text).map_err(|e| e.to_string())?;
    // An accepted graph is verified; it prints, and its file form reads back the same.
    let again = json::to_json(&g);
    let g2 = json::from_json(&again).unwrap_or_else(|e| panic!("a graph's own JSON does not read back: {e}\n{again}"));
    assert_eq!(json::to_json(&g2), again, "JSON round trip changed the graph");
    let _ = calm_ir::text::summary(&g, 3);
    let _ = calm_ir::dot::to_dot(&g);
    // Costs and the compiler under each symbol bound to a size drawn from the input's hash:
    // small, tile edges, and the edges of u32 and u64 arithmetic (the index proof, checked
    // products); any error is typed.
    const SIZES: [u64; 10] = [1, 2, 3, 17, 64, 1000, 1 << 16, (1 << 32) - 1, 1 << 32, 1 << 40];
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let mut bindings = calm_ir::Bindings::new();
    for (i, s) in g.symbols().into_iter().enumerate() {
        let draw = hash.rotate_left(7 * i as u32) % SIZES.len() as u64;
        bindings.insert(&s, SIZES[draw as usize]);
    }
    let _ = calm_ir::cost::graph_costs(&g, &bindings);
    // The compiler takes any verified graph: a plan (whose memory assignment is safe) or a
    // typed error, with and without the fusion passes.
    for fuse in [true, false] {
        let opts = calm_passes::lower::LowerOptions::default();
        if let Ok(c) = calm_passes::compile::compile(&g, &bindings, fuse, &opts) {
            calm_passes::memory::check_memory(&c.plan)
                .unwrap_or_else(|e| panic!("the memory plan of an accepted graph is unsafe: {e:?}"));
        }
    }
    Ok(())
}

#[cfg(feature = "runtime")]
fn safetensors_file(path: &Path) -> Result<(), String> {
    let (tensors, metadata) = safetensors::read_with_metadata(path).map_err(|e| e.to_string())?;
    for (name, t) in &tensors {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "`{name}`: values and shape disagree");
    }
    let bytes = safetensors::to_bytes_with_metadata(&tensors, &metadata);
    std::fs::write(path, &bytes).expect("the scratch folder is writable");
    let (again, meta_again) = safetensors::read_with_metadata(path).expect("a file written by calm reads back");
    assert_eq!(meta_again, metadata, "metadata round trip");
    assert_eq!(again.len(), tensors.len(), "tensor round trip");
    for (name, t) in &tensors {
        let u = &again[name];
        assert_eq!(u.shape, t.shape, "`{name}`: shape round trip");
        assert_eq!(u.data.type_name(), t.data.type_name(), "`{name}`: dtype round trip");
        let (a, b) = (t.data.to_f64(), u.data.to_f64());
        assert!(a.iter().zip(&b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan())), "`{name}`: values round trip");
    }
    Ok(())
}

fn check_dataset(d: calm_data::Dataset) {
    for s in &d.samples {
        assert!(s.text < d.texts.len(), "sample of line {} names text {}", s.line, s.text);
        assert!((s.culture as usize) < d.cultures.len(), "sample of line {}: culture out of range", s.line);
        assert!((s.label as usize) < d.classes.len(), "sample of line {}: label out of range", s.line);
        assert!(!d.texts[s.text].trim().is_empty(), "line {}: empty text accepted", s.line);
    }
    let stats = d.stats();
    assert_eq!(stats.samples, d.samples.len(), "stats count every sample");
}

fn table_file(path: &Path) -> Result<(), String> {
    let spec = calm_data::TableSpec { text: "text".into(), culture: "culture".into(), label: "label".into() };
    calm_data::load_table(path, &spec).map(check_dataset).map_err(|e| e.to_string())
}

fn config_file(path: &Path) -> Result<(), String> {
    let c = calm_models::CalmConfig::from_file(path).map_err(|e| e.to_string())?;
    // A valid config builds both graphs, or says why not; the graphs verify.
    for mode in [calm_models::Mode::Inference, calm_models::Mode::Training] {
        let g = calm_models::build(&c, mode).map_err(|e| e.to_string())?;
        calm_ir::verify(&g).unwrap_or_else(|e| panic!("a built CALM graph does not verify: {e}"));
    }
    Ok(())
}
