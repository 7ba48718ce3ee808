//! The safetensors format: an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the raw little-endian data.
//!
//! Read: F32, F64, F16 and BF16 (floats come back as f32, f64 stays f64), I32, I64 (narrowed to
//! i32 when every value fits), U32 and BOOL. Every structural problem of a file (header longer
//! than the file, bad JSON, unknown dtype, byte range that does not match the shape or lies
//! outside the data, overlapping ranges) is a [`SafetensorsError`] naming the file and tensor.
//! Write: atomically, tensors sorted by name, header padded to 8 bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::host::{HostData, HostTensor};

#[derive(Debug, Error)]
pub enum SafetensorsError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}`: {reason}")]
    Tensor { path: PathBuf, name: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Memory { path: PathBuf, source: crate::limits::MemoryError },
}

/// Bytes per element of a safetensors dtype this reader knows.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" => 2,
        "BOOL" => 1,
        _ => return None,
    })
}

fn decode(dtype: &str, bytes: &[u8]) -> Result<HostData, String> {
    #[cfg(test)]
    tests::DECODED.with(|n| n.set(n.get() + 1));
    let words4 = || bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    let words2 = || bytes.chunks_exact(2).map(|c| [c[0], c[1]]);
    Ok(match dtype {
        "F32" => HostData::F32(words4().map(f32::from_le_bytes).collect()),
        "F64" => {
            HostData::F64(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
        }
        "F16" => HostData::F32(words2().map(|w| f16::from_le_bytes(w).to_f32()).collect()),
        "BF16" => HostData::F32(words2().map(|w| bf16::from_le_bytes(w).to_f32()).collect()),
        "I32" => HostData::I32(words4().map(i32::from_le_bytes).collect()),
        "U32" => HostData::U32(words4().map(u32::from_le_bytes).collect()),
        "I64" => {
            let wide: Vec<i64> =
                bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
            let narrow: Result<Vec<i32>, _> = wide.iter().map(|&v| i32::try_from(v)).collect();
            HostData::I32(narrow.map_err(|_| "I64 values do not fit in i32".to_string())?)
        }
        "BOOL" => HostData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        other => return Err(format!("dtype {other} is not supported")),
    })
}

/// Reads every tensor of a safetensors file, by name.
pub fn read(path: &Path) -> Result<BTreeMap<String, HostTensor>, SafetensorsError> {
    Ok(read_with_metadata(path)?.0)
}

/// String metadata of a file (the format's `__metadata__`).
pub type Metadata = BTreeMap<String, String>;

/// Reads every tensor of a safetensors file and its `__metadata__` strings.
pub fn read_with_metadata(path: &Path) -> Result<(BTreeMap<String, HostTensor>, Metadata), SafetensorsError> {
    let io = |source| SafetensorsError::Io { path: path.to_path_buf(), source };
    // The file and its decoded values (up to twice its size, for 2-byte floats read as f32):
    // refused when they cannot fit, rather than aborting in the allocator.
    let size = std::fs::metadata(path).map_err(io)?.len();
    crate::limits::check_host(|| "reading it".to_string(), size.saturating_mul(3))
        .map_err(|source| SafetensorsError::Memory { path: path.to_path_buf(), source })?;
    let bytes = std::fs::read(path).map_err(io)?;
    parse(&bytes).map_err(|e| match e {
        ParseError::Corrupt(reason) => SafetensorsError::Corrupt { path: path.to_path_buf(), reason },
        ParseError::Tensor(name, reason) => SafetensorsError::Tensor { path: path.to_path_buf(), name, reason },
    })
}

/// A JSON object whose keys must be unique (serde_json would keep the last of two silently).
struct UniqueMap(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueMap, A::Error> {
                let mut seen = std::collections::BTreeSet::new();
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("`{k}` appears twice")));
                    }
                    out.push((k, v));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

enum ParseError {
    Corrupt(String),
    Tensor(String, String),
}

fn parse(bytes: &[u8]) -> Result<(BTreeMap<String, HostTensor>, Metadata), ParseError> {
    let corrupt = |r: String| ParseError::Corrupt(r);
    if bytes.len() < 8 {
        return Err(corrupt(format!("{} bytes is too short for the header length", bytes.len())));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let data_start = usize::try_from(header_len)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| corrupt(format!("header length {header_len} exceeds the file ({} bytes)", bytes.len())))?;
    let header: UniqueMap = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| corrupt(format!("header is not a JSON object of unique names: {e}")))?;
    let data = &bytes[data_start..];
    // Every entry is checked and the ranges proven disjoint before anything is decoded: a small
    // file with thousands of headers over one byte range would otherwise decode (and allocate)
    // that range once per header before the overlap was found. Disjoint ranges decode to at
    // most twice the data (2-byte floats widen to f32), which `read_with_metadata` budgeted.
    let mut entries: Vec<(usize, usize, String, &str, Vec<usize>)> = Vec::new();
    let mut metadata = Metadata::new();
    for (name, entry) in &header.0 {
        if name == "__metadata__" {
            let strings = entry.as_object().and_then(|m| {
                m.iter().map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect::<Option<Metadata>>()
            });
            metadata = strings.ok_or_else(|| corrupt("__metadata__ is not an object of strings".into()))?;
            continue;
        }
        let bad = |reason: String| ParseError::Tensor(name.clone(), reason);
        let dtype = entry.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("missing dtype".into()))?;
        let size = dtype_size(dtype).ok_or_else(|| bad(format!("unknown dtype {dtype}")))?;
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| dims.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
            .ok_or_else(|| bad("shape is not a list of sizes".into()))?;
        let offsets: Vec<usize> = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|o| o.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
            .filter(|o: &Vec<usize>| o.len() == 2)
            .ok_or_else(|| bad("data_offsets is not [begin, end]".into()))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let numel =
            shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad("shape overflows".into()))?;
        let expected = numel.checked_mul(size).ok_or_else(|| bad("size overflows".into()))?;
        if begin > end || end > data.len() {
            return Err(bad(format!("bytes {begin}..{end} lie outside the data ({} bytes)", data.len())));
        }
        if end - begin != expected {
            return Err(bad(format!("{} bytes for shape {shape:?} of {dtype}, expected {expected}", end - begin)));
        }
        entries.push((begin, end, name.clone(), dtype, shape));
    }
    entries.sort_by_key(|e| (e.0, e.1));
    for pair in entries.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(ParseError::Tensor(pair[1].2.clone(), format!("its bytes overlap those of `{}`", pair[0].2)));
        }
    }
    let mut out = BTreeMap::new();
    for (begin, end, name, dtype, shape) in entries {
        let values = decode(dtype, &data[begin..end]).map_err(|reason| ParseError::Tensor(name.clone(), reason))?;
        out.insert(name, HostTensor::new(shape, values));
    }
    Ok((out, metadata))
}

/// Little-endian bytes of `v`: on little-endian hosts a plain copy (checkpoints of the paper
/// preset hold ~1.3 GB, where a per-element conversion costs seconds).
fn le_bytes<T: bytemuck::Pod, const N: usize>(v: &[T], to_le: fn(&T) -> [u8; N]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(v).to_vec()
    } else {
        v.iter().flat_map(to_le).collect()
    }
}

fn encode(t: &HostTensor) -> (&'static str, Vec<u8>) {
    match &t.data {
        HostData::F32(v) => ("F32", le_bytes(v, |x| x.to_le_bytes())),
        HostData::F64(v) => ("F64", le_bytes(v, |x| x.to_le_bytes())),
        HostData::I32(v) => ("I32", le_bytes(v, |x| x.to_le_bytes())),
        HostData::U32(v) => ("U32", le_bytes(v, |x| x.to_le_bytes())),
        HostData::Bool(v) => ("BOOL", v.iter().map(|&b| b as u8).collect()),
    }
}

/// The bytes of a safetensors file holding `tensors`.
pub fn to_bytes(tensors: &BTreeMap<String, HostTensor>) -> Vec<u8> {
    to_bytes_with_metadata(tensors, &Metadata::new())
}

/// The bytes of a safetensors file holding `tensors` and, when not empty, `metadata`.
pub fn to_bytes_with_metadata(tensors: &BTreeMap<String, HostTensor>, metadata: &Metadata) -> Vec<u8> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialise"));
    }
    let mut data = Vec::new();
    for (name, t) in tensors {
        let (dtype, bytes) = encode(t);
        let begin = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.shape, "data_offsets": [begin, data.len()] }),
        );
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("headers serialise");
    // Pad with spaces so the data starts 8-byte aligned, as the format recommends.
    while !(header.len() + 8).is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}

/// Writes `tensors` to `path` atomically (temporary file, then rename).
pub fn write(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<(), SafetensorsError> {
    write_with_metadata(path, tensors, &Metadata::new())
}

/// Writes `tensors` and `metadata` to `path` atomically: one file, so a reader sees both or
/// neither (checkpoints keep their step and settings here).
pub fn write_with_metadata(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: &Metadata,
) -> Result<(), SafetensorsError> {
    if tensors.contains_key("__metadata__") {
        let reason = "the name is reserved by the format".to_string();
        return Err(SafetensorsError::Tensor { path: path.to_path_buf(), name: "__metadata__".into(), reason });
    }
    calm_ir::files::write_atomic(path, &to_bytes_with_metadata(tensors, metadata))
        .map_err(|source| SafetensorsError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    thread_local! {
        /// How many tensors this thread has decoded (to see what a refused file cost).
        pub(super) static DECODED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    use super::*;

    fn sample() -> BTreeMap<String, HostTensor> {
        let mut m = BTreeMap::new();
        m.insert("a/weight".to_string(), HostTensor::f32(vec![2, 3], vec![1.0, -2.5, 3.25, 0.0, 1e-8, -7.0]));
        m.insert("ids".to_string(), HostTensor::i32(vec![3], vec![0, 7, -1]));
        m.insert("flags".to_string(), HostTensor::new(vec![2], HostData::Bool(vec![true, false])));
        m.insert("wide".to_string(), HostTensor::new(vec![1], HostData::F64(vec![0.1])));
        m
    }

    #[test]
    fn round_trip_keeps_every_bit() {
        let m = sample();
        let bytes = to_bytes(&m);
        assert_eq!((u64::from_le_bytes(bytes[..8].try_into().unwrap()) + 8) % 8, 0);
        assert_eq!(parse(&bytes).ok().unwrap().0, m);
        let meta: Metadata = [("step".to_string(), "12".to_string())].into();
        let (back, back_meta) = parse(&to_bytes_with_metadata(&m, &meta)).ok().unwrap();
        assert_eq!((back, back_meta), (m, meta));
    }

    #[test]
    fn half_precision_and_i64_are_widened_or_narrowed() {
        let halves: Vec<u8> = [1.5f32, -0.25].iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
        let brains: Vec<u8> = [2.0f32, 0.5].iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
        let longs: Vec<u8> = [3i64, 512].iter().flat_map(|x| x.to_le_bytes()).collect();
        let header = serde_json::json!({
            "h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
            "b": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]},
            "l": {"dtype": "I64", "shape": [1, 2], "data_offsets": [8, 24]},
            "__metadata__": {"format": "pt"}
        });
        let bytes = file(&header, &[halves, brains, longs].concat());
        let (m, meta) = parse(&bytes).ok().unwrap();
        assert_eq!(meta["format"], "pt");
        assert_eq!(m["h"].data, HostData::F32(vec![1.5, -0.25]));
        assert_eq!(m["b"].data, HostData::F32(vec![2.0, 0.5]));
        assert_eq!(m["l"].data, HostData::I32(vec![3, 512]));
    }

    fn file(header: &Value, data: &[u8]) -> Vec<u8> {
        let h = serde_json::to_vec(header).unwrap();
        [&(h.len() as u64).to_le_bytes()[..], &h, data].concat()
    }

    fn reason(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(ParseError::Corrupt(r)) => format!("corrupt: {r}"),
            Err(ParseError::Tensor(n, r)) => format!("{n}: {r}"),
            Ok(_) => panic!("should be refused"),
        }
    }

    #[test]
    fn corrupt_files_are_refused_with_the_reason() {
        assert!(reason(b"abc").contains("too short"));
        let mut huge = to_bytes(&sample());
        huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(reason(&huge).contains("exceeds the file"));
        let bytes = to_bytes(&sample());
        assert!(reason(&bytes[..bytes.len() - 3]).contains("outside the data"));
        let mut bad_json = to_bytes(&sample());
        bad_json[9] = b'!';
        assert!(reason(&bad_json).contains("not a JSON object"));
        let x = serde_json::json!({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}});
        assert!(reason(&file(&x, &[0; 4])).contains("expected 8"));
        let x = serde_json::json!({"x": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 4]}});
        assert!(reason(&file(&x, &[0; 4])).contains("unknown dtype Q4"));
        let x = serde_json::json!({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "y": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}});
        assert!(reason(&file(&x, &[0; 8])).contains("overlap"));
        let x = serde_json::json!({"x": {"dtype": "F32", "shape": "two", "data_offsets": [0, 4]}});
        assert!(reason(&file(&x, &[0; 4])).contains("shape"));
        // The same name twice: refused rather than silently keeping the last.
        let entry = r#"{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}"#;
        let twice = format!(r#"{{"x": {entry}, "x": {entry}}}"#);
        let bytes = [&(twice.len() as u64).to_le_bytes()[..], twice.as_bytes(), &[0; 4]].concat();
        assert!(reason(&bytes).contains("`x` appears twice"));
    }

    /// Many headers over one byte range (64 over 64 KiB of data, which would decode to 4 MiB;
    /// thousands scale it to any size) are refused before a single tensor is decoded.
    #[test]
    fn overlapping_ranges_are_refused_before_anything_is_decoded() {
        let n = 1024 * 1024 / 4;
        let mut header = Map::new();
        for i in 0..64 {
            header.insert(
                format!("t{i}"),
                serde_json::json!({"dtype": "F32", "shape": [n / 16], "data_offsets": [0, n / 4]}),
            );
        }
        let bytes = file(&Value::Object(header), &vec![0; n / 4]);
        DECODED.with(|d| d.set(0));
        assert!(reason(&bytes).contains("overlap"));
        assert_eq!(DECODED.with(|d| d.get()), 0, "nothing is decoded from a refused file");
        // A valid file still decodes each tensor once.
        assert!(parse(&to_bytes(&sample())).is_ok());
        assert_eq!(DECODED.with(|d| d.get()), sample().len());
    }
}
