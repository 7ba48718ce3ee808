//! The stable JSON form, `calm-ir/1`.
//!
//! ```json
//! {
//!   "format": "calm-ir/1",
//!   "name": "calm",
//!   "nodes": [
//!     {"id":"n0","op":"input","attrs":{"dtype":"f32","name":"x","shape":["batch",4]},"results":[{"id":"v0","dtype":"f32","shape":["batch",4]}],"scope":"calm"},
//!     ...
//!   ],
//!   "outputs": [
//!     {"name":"y","value":"v7"}
//!   ]
//! }
//! ```
//! One node per line, keys in a fixed order and attributes sorted, so the output is
//! deterministic and diffs well; writing, reading and writing again gives identical bytes.
//! Ids in a file are any unique strings (arguments may refer forward); the reader renumbers
//! them in file order. A bad file gives a [`ReadError`] naming the field or node at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::files::write_atomic;
use crate::graph::{Graph, ValueId};
use crate::op::Op;
use crate::types::{DType, Shape, TensorType};
use crate::verify::{verify, VerifyErrors};

/// The format tag this build reads and writes.
pub const FORMAT: &str = "calm-ir/1";

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not valid JSON at line {line}, column {column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    #[error("field `format` is {found}; this build reads \"{FORMAT}\"")]
    Format { found: String },
    #[error("{at}: {message}")]
    Field { at: String, message: String },
    #[error("node {node}: unknown op `{op}`")]
    UnknownOp { node: String, op: String },
    #[error("{at}: id `{id}` is defined twice")]
    DuplicateId { at: String, id: String },
    #[error("{at}: value `{value}` is not defined by any node")]
    DanglingValue { at: String, value: String },
    #[error("invalid graph: {0}")]
    Invalid(#[from] VerifyErrors),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    id: String,
    op: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    attrs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    results: Vec<FileValue>,
    scope: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileValue {
    id: String,
    dtype: DType,
    shape: Shape,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOutput {
    name: String,
    value: String,
}

/// The JSON text of `g`.
pub fn to_json(g: &Graph) -> String {
    let nodes: Vec<String> = g
        .nodes
        .iter()
        .map(|(n, node)| {
            let mut attrs = match serde_json::to_value(&node.op).expect("ops serialise") {
                Value::Object(map) => map,
                other => unreachable!("op serialised to {other}"),
            };
            // The serialised tag (`fused` for every fused op, whose kind is an attribute).
            let op = match attrs.remove("op") {
                Some(Value::String(tag)) => tag,
                other => unreachable!("op tag serialised to {other:?}"),
            };
            let file = FileNode {
                id: n.to_string(),
                op,
                attrs,
                args: node.args.iter().map(ValueId::to_string).collect(),
                results: node
                    .results
                    .iter()
                    .map(|&v| {
                        let ty = g.value_type(v);
                        FileValue { id: v.to_string(), dtype: ty.dtype, shape: ty.shape.clone() }
                    })
                    .collect(),
                scope: node.scope.clone(),
            };
            line(&file)
        })
        .collect();
    let outputs: Vec<String> =
        g.outputs.iter().map(|o| line(&FileOutput { name: o.name.clone(), value: o.value.to_string() })).collect();
    let list = |items: &[String]| {
        if items.is_empty() {
            "[]".to_string()
        } else {
            format!("[\n    {}\n  ]", items.join(",\n    "))
        }
    };
    format!(
        "{{\n  \"format\": {},\n  \"name\": {},\n  \"nodes\": {},\n  \"outputs\": {}\n}}\n",
        Value::from(FORMAT),
        Value::from(g.name.as_str()),
        list(&nodes),
        list(&outputs)
    )
}

/// One compact JSON line for a file record.
fn line<T: Serialize>(record: &T) -> String {
    serde_json::to_string(record).expect("file records serialise")
}

fn field<T: serde::de::DeserializeOwned>(value: Value, at: &str) -> Result<T, ReadError> {
    serde_json::from_value(value).map_err(|e| ReadError::Field { at: at.to_string(), message: e.to_string() })
}

/// A node's op from its name and attributes. The name is checked on its own first, so a bad
/// attribute value is not mistaken for an unknown op; attributes the op does not have are
/// refused (serde cannot refuse them on attribute-less ops).
fn parse_op(node: &FileNode, at: &str) -> Result<Op, ReadError> {
    let tag_only = serde_json::json!({ "op": node.op });
    if let Err(e) = serde_json::from_value::<Op>(tag_only) {
        if e.to_string().starts_with("unknown variant") {
            return Err(ReadError::UnknownOp { node: node.id.clone(), op: node.op.clone() });
        }
    }
    let mut op_value = node.attrs.clone();
    op_value.insert("op".into(), Value::String(node.op.clone()));
    let op: Op = serde_json::from_value(Value::Object(op_value))
        .map_err(|e| ReadError::Field { at: format!("{at}.attrs"), message: e.to_string() })?;
    let known = match serde_json::to_value(&op).expect("ops serialise") {
        Value::Object(map) => map,
        other => unreachable!("op serialised to {other}"),
    };
    let optional = ["frozen"];
    if let Some(extra) = node.attrs.keys().find(|k| !known.contains_key(*k) && !optional.contains(&k.as_str())) {
        return Err(ReadError::Field {
            at: format!("{at}.attrs"),
            message: format!("`{}` has no attribute `{extra}`", node.op),
        });
    }
    Ok(op)
}

/// Parses and verifies a graph from its JSON text.
pub fn from_json(text: &str) -> Result<Graph, ReadError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| ReadError::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let Value::Object(mut top) = doc else {
        return Err(ReadError::Field { at: "file".into(), message: "expected a JSON object".into() });
    };
    // The format is checked first, so a file of another version says so rather than failing on
    // whatever field changed.
    match top.remove("format") {
        Some(Value::String(f)) if f == FORMAT => {}
        Some(other) => return Err(ReadError::Format { found: other.to_string() }),
        None => return Err(ReadError::Format { found: "missing".into() }),
    }
    let take = |top: &mut Map<String, Value>, key: &str| {
        top.remove(key).ok_or_else(|| ReadError::Field { at: key.to_string(), message: "missing field".into() })
    };
    let name: String = field(take(&mut top, "name")?, "name")?;
    let nodes: Vec<Value> = field(take(&mut top, "nodes")?, "nodes")?;
    let outputs: Vec<Value> = field(take(&mut top, "outputs")?, "outputs")?;
    if let Some(key) = top.keys().next() {
        return Err(ReadError::Field { at: key.clone(), message: "unknown field".into() });
    }

    // Pass 1: parse each node and number its results as the graph will.
    let mut parsed = Vec::with_capacity(nodes.len());
    let mut node_ids: HashMap<String, usize> = HashMap::new();
    let mut value_ids: HashMap<String, ValueId> = HashMap::new();
    let mut next_value = 0usize;
    for (i, raw) in nodes.into_iter().enumerate() {
        let at = format!("nodes[{i}]");
        let node: FileNode = field(raw, &at)?;
        let at = format!("nodes[{i}] ({})", node.id);
        if node_ids.insert(node.id.clone(), i).is_some() {
            return Err(ReadError::DuplicateId { at, id: node.id });
        }
        let op = parse_op(&node, &at)?;
        for r in &node.results {
            if value_ids.insert(r.id.clone(), crate::entity::EntityId::new(next_value)).is_some() {
                return Err(ReadError::DuplicateId { at: at.clone(), id: r.id.clone() });
            }
            next_value += 1;
        }
        parsed.push((op, node));
    }

    // Pass 2: resolve arguments (forward references allowed; the verifier finds cycles).
    let mut g = Graph::new(&name);
    for (op, node) in parsed {
        let args = node
            .args
            .iter()
            .map(|a| {
                value_ids
                    .get(a)
                    .copied()
                    .ok_or_else(|| ReadError::DanglingValue { at: format!("node {}", node.id), value: a.clone() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let types = node.results.into_iter().map(|r| TensorType::new(r.dtype, r.shape)).collect();
        g.add_node(op, args, types, &node.scope);
    }
    for (i, raw) in outputs.into_iter().enumerate() {
        let out: FileOutput = field(raw, &format!("outputs[{i}]"))?;
        let value = value_ids.get(&out.value).copied().ok_or_else(|| ReadError::DanglingValue {
            at: format!("output `{}`", out.name),
            value: out.value.clone(),
        })?;
        g.outputs.push(crate::graph::Output { name: out.name, value });
    }
    verify(&g)?;
    Ok(g)
}

pub fn read_file(path: &Path) -> Result<Graph, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    from_json(&text)
}

/// Writes `g` to `path` atomically.
pub fn write_file(g: &Graph, path: &Path) -> std::io::Result<()> {
    write_atomic(path, to_json(g).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::TypeError;
    use crate::sample::tiny_classifier;
    use crate::verify::VerifyErrorKind;

    fn sample_doc() -> Value {
        serde_json::from_str(&to_json(&tiny_classifier())).unwrap()
    }

    fn read_doc(doc: &Value) -> Result<Graph, ReadError> {
        from_json(&serde_json::to_string_pretty(doc).unwrap())
    }

    /// The node object with op `name` (the first one).
    fn node_mut<'a>(doc: &'a mut Value, op: &str) -> &'a mut Value {
        doc["nodes"].as_array_mut().unwrap().iter_mut().find(|n| n["op"] == op).unwrap()
    }

    fn verify_kinds(e: ReadError) -> Vec<VerifyErrorKind> {
        match e {
            ReadError::Invalid(errs) => errs.0.into_iter().map(|e| e.kind).collect(),
            other => panic!("expected a verifier error, got {other}"),
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let g = tiny_classifier();
        let text = to_json(&g);
        let back = from_json(&text).unwrap();
        assert_eq!(back, g);
        assert_eq!(to_json(&back), text);
        assert!(text.starts_with("{\n  \"format\": \"calm-ir/1\",\n"));
        assert_eq!(text.lines().count(), g.nodes.len() + g.outputs.len() + 8);
    }

    #[test]
    fn reader_accepts_any_unique_ids_and_forward_references() {
        let mut doc = sample_doc();
        let nodes = doc["nodes"].as_array_mut().unwrap();
        nodes.reverse();
        for n in nodes.iter_mut() {
            n["id"] = Value::from(format!("node-{}", n["id"].as_str().unwrap()));
        }
        let g = read_doc(&doc).unwrap();
        assert_eq!(g.nodes.len(), tiny_classifier().nodes.len());
        // Written back, ids are renumbered in file order and the text reads again.
        assert_eq!(to_json(&from_json(&to_json(&g)).unwrap()), to_json(&g));
    }

    #[test]
    fn truncated_json_names_line_and_column() {
        let text = to_json(&tiny_classifier());
        let e = from_json(&text[..text.len() / 2]).unwrap_err();
        assert!(matches!(e, ReadError::Syntax { line, .. } if line > 1), "{e}");
        assert!(matches!(from_json(""), Err(ReadError::Syntax { .. })));
    }

    #[test]
    fn format_version_is_checked_first() {
        let mut doc = sample_doc();
        doc["format"] = Value::from("calm-ir/2");
        doc["nodes"] = Value::from("not even a list");
        let e = read_doc(&doc).unwrap_err();
        assert!(matches!(&e, ReadError::Format { found } if found == "\"calm-ir/2\""), "{e}");
        doc.as_object_mut().unwrap().remove("format");
        assert!(matches!(read_doc(&doc), Err(ReadError::Format { .. })));
        assert!(matches!(from_json("[1, 2]"), Err(ReadError::Field { .. })));
    }

    #[test]
    fn unknown_op_names_the_node() {
        let mut doc = sample_doc();
        node_mut(&mut doc, "gelu")["op"] = Value::from("swish");
        let e = read_doc(&doc).unwrap_err();
        assert!(matches!(&e, ReadError::UnknownOp { op, node } if op == "swish" && node.starts_with('n')), "{e}");
    }

    #[test]
    fn attributes_an_op_does_not_have_are_refused() {
        let mut doc = sample_doc();
        node_mut(&mut doc, "gelu")["attrs"] = serde_json::json!({"approximate": "tanh"});
        let e = read_doc(&doc).unwrap_err();
        assert!(e.to_string().contains("`gelu` has no attribute `approximate`"), "{e}");
        // A bad value of a known op is an attribute error, not an unknown op.
        let mut doc = sample_doc();
        node_mut(&mut doc, "cast")["attrs"]["to"] = Value::from("f64");
        let e = read_doc(&doc).unwrap_err();
        assert!(matches!(&e, ReadError::Field { message, .. } if message.contains("f64")), "{e}");
    }

    #[test]
    fn bad_attributes_and_fields_name_where() {
        let mut doc = sample_doc();
        node_mut(&mut doc, "softmax")["attrs"]["axis"] = Value::from("last");
        let e = read_doc(&doc).unwrap_err();
        assert!(matches!(&e, ReadError::Field { at, .. } if at.ends_with(".attrs")), "{e}");

        let mut doc = sample_doc();
        node_mut(&mut doc, "gelu").as_object_mut().unwrap().remove("scope");
        let e = read_doc(&doc).unwrap_err();
        assert!(
            matches!(&e, ReadError::Field { at, message } if at.starts_with("nodes[") && message.contains("scope")),
            "{e}"
        );

        let mut doc = sample_doc();
        doc["extra"] = Value::from(1);
        assert!(matches!(read_doc(&doc), Err(ReadError::Field { at, .. }) if at == "extra"));
    }

    #[test]
    fn dangling_and_duplicate_ids() {
        let mut doc = sample_doc();
        node_mut(&mut doc, "gelu")["args"][0] = Value::from("v999");
        let e = read_doc(&doc).unwrap_err();
        assert!(matches!(&e, ReadError::DanglingValue { value, .. } if value == "v999"), "{e}");

        let mut doc = sample_doc();
        doc["outputs"][0]["value"] = Value::from("v999");
        assert!(matches!(read_doc(&doc), Err(ReadError::DanglingValue { at, .. }) if at.starts_with("output")));

        let mut doc = sample_doc();
        let first = doc["nodes"][0]["results"][0]["id"].clone();
        node_mut(&mut doc, "gelu")["results"][0]["id"] = first;
        assert!(matches!(read_doc(&doc), Err(ReadError::DuplicateId { .. })));

        let mut doc = sample_doc();
        let first = doc["nodes"][0]["id"].clone();
        node_mut(&mut doc, "gelu")["id"] = first;
        assert!(matches!(read_doc(&doc), Err(ReadError::DuplicateId { .. })));
    }

    #[test]
    fn cycle_is_refused() {
        let mut doc = sample_doc();
        let ln_out = node_mut(&mut doc, "layer_norm")["results"][0]["id"].clone();
        node_mut(&mut doc, "gelu")["args"][0] = ln_out;
        let k = verify_kinds(read_doc(&doc).unwrap_err());
        assert!(matches!(&k[..], [VerifyErrorKind::Cycle(nodes)] if nodes.len() > 2), "{k:?}");
    }

    #[test]
    fn shape_and_dtype_mismatches_are_refused() {
        let mut doc = sample_doc();
        node_mut(&mut doc, "gelu")["results"][0]["shape"][2] = Value::from(31);
        let k = verify_kinds(read_doc(&doc).unwrap_err());
        assert!(k.iter().any(|k| matches!(k, VerifyErrorKind::ResultType { .. })), "{k:?}");

        let mut doc = sample_doc();
        let x = node_mut(&mut doc, "input");
        x["attrs"]["dtype"] = Value::from("i32");
        x["results"][0]["dtype"] = Value::from("i32");
        let k = verify_kinds(read_doc(&doc).unwrap_err());
        assert!(k.iter().any(|k| matches!(k, VerifyErrorKind::Type(TypeError::DType(_)))), "{k:?}");

        let mut doc = sample_doc();
        node_mut(&mut doc, "input")["results"][0]["dtype"] = Value::from("f64");
        assert!(matches!(read_doc(&doc), Err(ReadError::Field { message, .. }) if message.contains("f64")));
    }

    #[test]
    fn duplicate_parameter_name_is_refused() {
        let mut doc = sample_doc();
        let nodes = doc["nodes"].as_array_mut().unwrap();
        let params: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i]["op"] == "param").collect();
        let name = nodes[params[0]]["attrs"]["name"].clone();
        nodes[params[1]]["attrs"]["name"] = name;
        let k = verify_kinds(read_doc(&doc).unwrap_err());
        assert!(k.iter().any(|k| matches!(k, VerifyErrorKind::DuplicateParam { .. })), "{k:?}");
    }

    #[test]
    fn negative_zero_and_fractional_dimensions_are_refused() {
        for (bad, says) in [
            (Value::from(-3), "-3 is not positive"),
            (Value::from(0), "0 is not positive"),
            (Value::from(2.5), "not a positive integer"),
            (Value::from("9x"), "not a valid symbol"),
        ] {
            let mut doc = sample_doc();
            node_mut(&mut doc, "input")["results"][0]["shape"][0] = bad.clone();
            let e = read_doc(&doc).unwrap_err();
            assert!(matches!(&e, ReadError::Field { message, .. } if message.contains(says)), "{bad}: {e}");
        }
        let mut doc = sample_doc();
        node_mut(&mut doc, "reshape")["attrs"]["shape"][0] = Value::from(0);
        assert!(matches!(read_doc(&doc), Err(ReadError::Field { at, .. }) if at.ends_with(".attrs")));
    }

    #[test]
    fn symbol_where_a_fixed_size_is_needed_is_refused() {
        let mut doc = sample_doc();
        let p = node_mut(&mut doc, "param");
        p["attrs"]["shape"][0] = Value::from("batch");
        p["results"][0]["shape"][0] = Value::from("batch");
        let k = verify_kinds(read_doc(&doc).unwrap_err());
        assert!(
            k.iter().any(|k| matches!(k, VerifyErrorKind::Type(TypeError::Attribute(m)) if m.contains("`batch`"))),
            "{k:?}"
        );
    }

    #[test]
    fn write_file_then_read_file() {
        let dir = std::env::temp_dir().join(format!("calm-ir-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.json");
        let g = tiny_classifier();
        write_file(&g, &path).unwrap();
        assert_eq!(read_file(&path).unwrap(), g);
        assert!(matches!(read_file(&dir.join("missing.json")), Err(ReadError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
