//! Seed inputs: valid files of each format, made by calm's own writers (so they follow the
//! formats as the code has them now) plus a few written by hand for the corners.

use crate::targets::Target;

/// The seed inputs of `target`.
pub fn seeds(target: Target) -> Vec<Vec<u8>> {
    match target {
        Target::IrJson => ir_json(),
        #[cfg(feature = "runtime")]
        Target::Safetensors => safetensors(),
        Target::Crehate => crehate(),
        Target::Table => table(),
        Target::Config => config(),
        #[cfg(feature = "runtime")]
        Target::Checkpoint => checkpoint(),
        Target::Bind => ["batch=64,tokens=128", "n=3", "", "batch = 1 , tokens=18446744073709551615", "b=4294967296"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
    }
}

fn ir_json() -> Vec<Vec<u8>> {
    let tiny = calm_models::CalmConfig::preset("tiny").expect("the tiny preset");
    let calm = calm_models::build(&tiny, calm_models::Mode::Inference).expect("the tiny CALM graph builds");
    let mut b = calm_ir::GraphBuilder::new("small");
    let small = (|| {
        let x = b.input("x", calm_ir::DType::F32, calm_ir::shape!["n", 3u64])?;
        let w = b.param("w", calm_ir::shape![3u64, 2u64], calm_ir::Init::Normal { mean: 0.0, std: 1.0 })?;
        let y = b.matmul(x, w, false, false)?;
        let y = b.softmax(y, -1)?;
        let (_, top) = b.top_k(y, 1)?;
        b.output("y", y);
        b.output("top", top);
        Ok::<_, calm_ir::BuildError>(())
    })();
    small.expect("the small graph builds");
    let small = b.finish().expect("the small graph verifies");
    [calm_ir::sample::tiny_classifier(), small, calm].iter().map(|g| calm_ir::json::to_json(g).into_bytes()).collect()
}

#[cfg(feature = "runtime")]
fn safetensors() -> Vec<Vec<u8>> {
    use calm_runtime::host::{HostData, HostTensor};
    use std::collections::BTreeMap;
    let all = BTreeMap::from([
        ("f32".to_string(), HostTensor::f32(vec![2, 3], vec![1.0, -2.0, 0.5, f32::MAX, 0.0, -0.0])),
        ("f64".to_string(), HostTensor::new(vec![2], HostData::F64(vec![1e300, -1.0]))),
        ("i32".to_string(), HostTensor::i32(vec![3, 1], vec![i32::MIN, 0, 7])),
        ("u32".to_string(), HostTensor::new(vec![1], HostData::U32(vec![u32::MAX]))),
        ("bool".to_string(), HostTensor::new(vec![2, 2], HostData::Bool(vec![true, false, false, true]))),
        ("scalar".to_string(), HostTensor::f32(vec![], vec![3.5])),
        ("empty".to_string(), HostTensor::f32(vec![0, 4], vec![])),
    ]);
    let metadata = BTreeMap::from([("format".to_string(), "calm".to_string()), ("step".to_string(), "12".into())]);
    let one = BTreeMap::from([("w".to_string(), HostTensor::f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]))]);
    vec![
        calm_runtime::safetensors::to_bytes_with_metadata(&all, &metadata),
        calm_runtime::safetensors::to_bytes(&one),
        calm_runtime::safetensors::to_bytes(&BTreeMap::new()),
    ]
}

const CREHATE_HEADER: &str =
    "ID,Text,Australia_Hate,United_States_Hate,United_Kingdom_Hate,South_Africa_Hate,Singapore_Hate";

fn crehate() -> Vec<Vec<u8>> {
    let hand = format!(
        "{CREHATE_HEADER}\r\nA-1,\"A \"\"quoted\"\" post,\nover two lines\",0,1,0.0,1.0,0\r\nB-2,plain text,1,1,1,1,1\r\n\r\n"
    );
    let mut out = vec![hand.into_bytes(), format!("{CREHATE_HEADER}\n").into_bytes()];
    // The first posts of the real split, where this machine has it.
    if let Some(text) =
        calm_data::crehate_dir().ok().and_then(|d| std::fs::read_to_string(d.join("CREHate_train.csv")).ok())
    {
        out.push(text.lines().take(12).collect::<Vec<_>>().join("\n").into_bytes());
    }
    out
}

fn table() -> Vec<Vec<u8>> {
    vec![
        b"text,culture,label\nhello there,US,1\n\"a, b\",UK,0\nsame,US,2\n".to_vec(),
        b"id,label,culture,text\n1,hate,SG,words\n2,fine,SG,more words\n".to_vec(),
        b"{\"text\": \"hi\", \"culture\": \"AU\", \"label\": 1}\n\n{\"text\": \"yo\", \"culture\": \"ZA\", \"label\": 0.0}\n"
            .to_vec(),
        b"{\"text\": \"x\", \"culture\": \"AU\", \"label\": \"pos\", \"extra\": [1, {}]}\n".to_vec(),
    ]
}

fn config() -> Vec<Vec<u8>> {
    let tiny = calm_models::CalmConfig::preset("tiny").expect("the tiny preset");
    let small = calm_models::CalmConfig::preset("small").expect("the small preset");
    vec![
        tiny.to_toml().into_bytes(),
        small.to_toml().into_bytes(),
        b"width = 32\nheads = 2\nclusters = 3\nexperts = 4\ntop_k = 2\n".to_vec(),
        b"{\"width\": 16, \"heads\": 4, \"reflective_rounds\": 1}".to_vec(),
    ]
}

/// A tiny CALM run's checkpoint at step 0, as `calm train` writes it.
#[cfg(feature = "runtime")]
fn checkpoint() -> Vec<Vec<u8>> {
    use calm_train::checkpoint::{Checkpoint, RunState};
    use calm_train::trainer::{Backend, Settings};
    let config = calm_models::CalmConfig::preset("tiny").expect("the tiny preset");
    let model = calm_train::model::ModelSpec::variant("full", &config).expect("CALM");
    let graph = model.training_graph().expect("the tiny training graph builds");
    let params = calm_runtime::params::ParamStore::init(&graph, 1);
    let settings = Settings {
        epochs: 1,
        batch_size: 4,
        learning_rate: 1e-3,
        weight_decay: 0.01,
        warmup_fraction: 0.1,
        seed: 1,
        backend: Backend::Flex,
        // Not the default, so the seed's state holds the field.
        precision: calm_passes::plan::Precision::Default,
        max_tokens: 16,
    };
    let state = RunState {
        format: 1,
        model,
        settings,
        cultures: vec!["US".into(), "UK".into(), "SG".into()],
        classes: vec!["0".into(), "1".into()],
        step: 0,
        total_steps: 3,
        steps_per_epoch: 3,
        best: None,
        data: "seed".into(),
        backbone: "tiny".into(),
    };
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("last.safetensors");
    let optimizer = calm_train::optim::AdamW::new(0.01);
    Checkpoint::write(&path, &state, &params, &optimizer).expect("the seed checkpoint writes");
    vec![std::fs::read(&path).expect("the seed checkpoint reads")]
}
