//! Generic tables: a `.csv` file with a header row or a `.jsonl` file with one JSON object a
//! line, one sample a row, with the text, culture and label in columns (fields) named by a
//! [`TableSpec`].

use std::path::Path;

use csv::StringRecord;
use serde_json::Value;

use crate::csvfile::CsvFile;
use crate::dataset::{Dataset, Interner, Sample};
use crate::error::{DataError, DataErrorKind};

/// The names of the columns (CSV) or fields (JSONL) that hold each sample's text, culture and
/// label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub text: String,
    pub culture: String,
    pub label: String,
}

/// Numeric labels above this are refused (a typo, not a class count).
const MAX_NUMERIC_LABEL: f64 = 9999.0;

/// One row as read, before the labels are turned into classes.
struct Row {
    text: usize,
    culture: u32,
    label: String,
    line: usize,
}

/// Reads a table: `.csv` (with a header row) or `.jsonl` (one JSON object a line, blank lines
/// skipped), chosen by the extension; any other extension is an error.
///
/// Cultures are named in order of first appearance; identical texts share one index. Labels
/// that are all non-negative integers (`3`, `3.0`) give classes `"0"` to `"max"`; otherwise
/// (any label not a number) the distinct labels, sorted by name, are the classes.
pub fn load_table(path: &Path, spec: &TableSpec) -> Result<Dataset, DataError> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let mut texts = Interner::default();
    let mut cultures = Interner::default();
    let rows = match extension.as_deref() {
        Some("csv") => read_csv(path, spec, &mut texts, &mut cultures)?,
        Some("jsonl") => read_jsonl(path, spec, &mut texts, &mut cultures)?,
        _ => return Err(DataError::file(path, DataErrorKind::Extension)),
    };
    if rows.is_empty() {
        return Err(DataError::file(path, DataErrorKind::NoRows));
    }
    let (classes, labels) = classes(path, &spec.label, &rows)?;
    let samples = rows
        .iter()
        .zip(labels)
        .map(|(r, label)| Sample { text: r.text, culture: r.culture, label, line: r.line })
        .collect();
    Ok(Dataset { source: path.to_path_buf(), cultures: cultures.names, classes, texts: texts.names, samples })
}

fn read_csv(
    path: &Path,
    spec: &TableSpec,
    texts: &mut Interner,
    cultures: &mut Interner,
) -> Result<Vec<Row>, DataError> {
    let mut file = CsvFile::open(path)?;
    let columns = file.columns(&[&spec.text, &spec.culture, &spec.label])?;
    let (text_column, culture_column, label_column) = (columns[0], columns[1], columns[2]);
    let mut rows = Vec::new();
    let mut record = StringRecord::new();
    while let Some(line) = file.next(&mut record)? {
        let text = &record[text_column];
        if text.trim().is_empty() {
            return Err(DataError::at(path, line, DataErrorKind::EmptyText { column: spec.text.clone() }));
        }
        let culture = non_empty(path, line, &spec.culture, &record[culture_column])?;
        let label = non_empty(path, line, &spec.label, &record[label_column])?;
        rows.push(Row {
            text: texts.intern(text),
            culture: cultures.intern(culture) as u32,
            label: label.to_string(),
            line,
        });
    }
    Ok(rows)
}

fn non_empty<'v>(path: &Path, line: usize, column: &str, value: &'v str) -> Result<&'v str, DataError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(DataError::at(path, line, DataErrorKind::EmptyValue { column: column.to_string() }));
    }
    Ok(value)
}

fn read_jsonl(
    path: &Path,
    spec: &TableSpec,
    texts: &mut Interner,
    cultures: &mut Interner,
) -> Result<Vec<Row>, DataError> {
    let bytes = crate::csvfile::read_whole(path)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DataError::file(path, DataErrorKind::Empty));
    }
    let mut rows = Vec::new();
    for (i, line_bytes) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let at = |kind| DataError::at(path, line, kind);
        let text = std::str::from_utf8(line_bytes).map_err(|_| at(DataErrorKind::Utf8))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim().is_empty() {
            continue;
        }
        let object = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => object,
            Ok(other) => return Err(at(DataErrorKind::Json(format!("found {}", kind_of(&other))))),
            Err(e) => return Err(at(DataErrorKind::Json(json_message(&e)))),
        };
        let field = |name: &str| match object.get(name) {
            None | Some(Value::Null) => Err(at(DataErrorKind::MissingField { field: name.to_string() })),
            Some(v) => Ok(v),
        };
        let wrong_type = |name: &str, v: &Value, expected| {
            at(DataErrorKind::FieldType { field: name.to_string(), found: kind_of(v), expected })
        };
        let text = match field(&spec.text)? {
            Value::String(s) if s.trim().is_empty() => {
                return Err(at(DataErrorKind::EmptyText { column: spec.text.clone() }))
            }
            Value::String(s) => s,
            v => return Err(wrong_type(&spec.text, v, "a string")),
        };
        let culture = match field(&spec.culture)? {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            v => return Err(wrong_type(&spec.culture, v, "a string or a number")),
        };
        let label = match field(&spec.label)? {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            v => return Err(wrong_type(&spec.label, v, "a string or a number")),
        };
        if culture.is_empty() {
            return Err(at(DataErrorKind::EmptyValue { column: spec.culture.clone() }));
        }
        if label.is_empty() {
            return Err(at(DataErrorKind::EmptyValue { column: spec.label.clone() }));
        }
        rows.push(Row { text: texts.intern(text), culture: cultures.intern(&culture) as u32, label, line });
    }
    Ok(rows)
}

/// serde_json's message without its position (always line 1 of a one-line document).
fn json_message(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&position) {
        Some(m) => format!("{m} (column {})", e.column()),
        None => message,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The classes and each row's label index: numeric classes `"0"..="max"` when every label is a
/// finite number (each must then be a non-negative integer), else the sorted distinct labels.
fn classes(path: &Path, column: &str, rows: &[Row]) -> Result<(Vec<String>, Vec<u32>), DataError> {
    let numbers: Option<Vec<f64>> =
        rows.iter().map(|r| r.label.parse::<f64>().ok().filter(|x| x.is_finite())).collect();
    if let Some(numbers) = numbers {
        let mut labels = Vec::with_capacity(rows.len());
        for (r, &x) in rows.iter().zip(&numbers) {
            if x < 0.0 || x.fract() != 0.0 || x > MAX_NUMERIC_LABEL {
                let kind = DataErrorKind::Label {
                    column: column.to_string(),
                    value: r.label.clone(),
                    expected: "a non-negative integer below 10000 (or all labels strings)",
                };
                return Err(DataError::at(path, r.line, kind));
            }
            labels.push(x as u32);
        }
        let max = labels.iter().copied().max().unwrap_or(0);
        return Ok(((0..=max).map(|c| c.to_string()).collect(), labels));
    }
    let mut classes: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    classes.sort_unstable();
    classes.dedup();
    // Every label is among the classes by construction.
    let labels = rows.iter().map(|r| classes.binary_search(&r.label).unwrap_or(0) as u32).collect();
    Ok((classes, labels))
}
