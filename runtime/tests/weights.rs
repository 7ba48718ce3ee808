//! Weight files: round trip, and every way a file can disagree with a graph.

use std::collections::BTreeMap;

use calm_ir::sample::tiny_classifier;
use calm_runtime::host::{HostData, HostTensor};
use calm_runtime::params::{LoadError, Mismatch, ParamStore};
use calm_runtime::safetensors::{self, SafetensorsError};

fn tensors(store: &ParamStore) -> BTreeMap<String, HostTensor> {
    store.iter().map(|(n, t)| (n.to_string(), t.clone())).collect()
}

#[test]
fn weights_round_trip_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let g = tiny_classifier();
    let store = ParamStore::init(&g, 42);
    let path = dir.path().join("w.safetensors");
    store.save(&path).unwrap();
    assert_eq!(ParamStore::load(&g, &path).unwrap(), store);
    // Saving again over the file leaves exactly one file (no temporary left behind).
    store.save(&path).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn half_precision_weights_load_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let g = tiny_classifier();
    let store = ParamStore::init(&g, 1);
    // Write every weight as f16 by hand: 2-byte little-endian halves.
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in store.iter() {
        let begin = data.len();
        for x in t.to_f32().unwrap() {
            data.extend(half::f16::from_f32(x).to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F16", "shape": t.shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).unwrap();
    let path = dir.path().join("half.safetensors");
    std::fs::write(&path, [&(h.len() as u64).to_le_bytes()[..], &h, &data].concat()).unwrap();
    let loaded = ParamStore::load(&g, &path).unwrap();
    for (name, t) in store.iter() {
        let (a, b) = (t.to_f32().unwrap(), loaded.get(name).unwrap().to_f32().unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-3 * (1.0 + x.abs())), "{name}");
    }
}

#[test]
fn every_mismatch_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let g = tiny_classifier();
    let mut t = tensors(&ParamStore::init(&g, 0));
    t.remove("tiny/head/out/bias");
    t.insert("tiny/block/proj/weight".into(), HostTensor::f32(vec![16, 32], vec![0.0; 512]));
    t.insert("tiny/block/ln/bias".into(), HostTensor::i32(vec![32], vec![0; 32]));
    t.insert("tiny/extra/weight".into(), HostTensor::f32(vec![1], vec![0.0]));
    let path = dir.path().join("bad.safetensors");
    safetensors::write(&path, &t).unwrap();
    let LoadError::Mismatches { mismatches, .. } = ParamStore::load(&g, &path).unwrap_err() else {
        panic!("mismatches")
    };
    assert_eq!(mismatches.len(), 4, "{mismatches:?}");
    assert!(mismatches.iter().any(|m| matches!(m, Mismatch::Missing { name, .. } if name == "tiny/head/out/bias")));
    assert!(mismatches.iter().any(|m| matches!(m, Mismatch::Unexpected { name } if name == "tiny/extra/weight")));
    assert!(mismatches.iter().any(|m| matches!(m, Mismatch::Shape { name, expected, found } if name == "tiny/block/proj/weight" && expected == &[32, 16] && found == &[16, 32])));
    assert!(mismatches
        .iter()
        .any(|m| matches!(m, Mismatch::DType { name, found: "i32" } if name == "tiny/block/ln/bias")));
    let line = ParamStore::load(&g, &path).unwrap_err().to_string();
    assert!(line.contains("4 mismatches") && !line.contains('\n'), "{line}");
}

#[test]
fn corrupt_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let g = tiny_classifier();
    let path = dir.path().join("w.safetensors");
    ParamStore::init(&g, 0).save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = ParamStore::load(&g, &cut).unwrap_err();
    assert!(matches!(e, LoadError::File(SafetensorsError::Tensor { .. })), "{e}");
    assert!(e.to_string().contains("cut.safetensors"), "{e}");
    std::fs::write(&cut, b"not a weight file").unwrap();
    assert!(matches!(ParamStore::load(&g, &cut).unwrap_err(), LoadError::File(SafetensorsError::Corrupt { .. })));
    assert!(matches!(
        ParamStore::load(&g, &dir.path().join("none")).unwrap_err(),
        LoadError::File(SafetensorsError::Io { .. })
    ));
    // Inputs and outputs use the same files: integer and bool tensors survive too.
    let mut m = BTreeMap::new();
    m.insert("ids".to_string(), HostTensor::new(vec![2], HostData::U32(vec![u32::MAX, 3])));
    let p = dir.path().join("ints.safetensors");
    safetensors::write(&p, &m).unwrap();
    assert_eq!(safetensors::read(&p).unwrap(), m);
}
