//! The loaders' error: what is wrong, in which file, on which line.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A dataset file that cannot be read or does not have the expected layout. Displays as
/// `FILE:LINE: reason` (`FILE: reason` when no line applies).
#[derive(Debug, Error)]
#[error("{}: {kind}", Location(.path, *.line))]
pub struct DataError {
    pub path: PathBuf,
    /// 1-based line where the offending row (or the header) starts.
    pub line: Option<usize>,
    pub kind: DataErrorKind,
}

#[derive(Debug, Error)]
pub enum DataErrorKind {
    #[error("cannot read: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Memory(calm_ir::limits::MemoryError),
    #[error("empty file (no header row)")]
    Empty,
    #[error("no rows (a header but no samples)")]
    NoRows,
    #[error("unknown extension (a table is .csv with a header row or .jsonl with one JSON object a line)")]
    Extension,
    #[error("missing {} {} in the header (it has {})", plural(.names.len(), "column"), quoted(.names), quoted(.found))]
    MissingColumns { names: Vec<String>, found: Vec<String> },
    #[error("column `{name}` appears more than once in the header")]
    DuplicateColumn { name: String },
    #[error("row has {found} {}, the header has {expected}", plural(*.found, "field"))]
    FieldCount { expected: usize, found: usize },
    #[error("column `{column}`: label `{value}` is not {expected}")]
    Label { column: String, value: String, expected: &'static str },
    #[error("column `{column}`: empty text")]
    EmptyText { column: String },
    #[error("column `{column}`: empty value")]
    EmptyValue { column: String },
    #[error("missing field `{field}`")]
    MissingField { field: String },
    #[error("field `{field}` is {found}, expected {expected}")]
    FieldType { field: String, found: &'static str, expected: &'static str },
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("not valid UTF-8")]
    Utf8,
    #[error("malformed CSV: {0}")]
    Csv(String),
    #[error("{} {} not among the given cultures ({})", plural(.names.len(), "culture"), quoted(.names), quoted(.known))]
    UnknownCultures { names: Vec<String>, known: Vec<String> },
    #[error("{} {} not among the model's classes ({})", plural(.names.len(), "label"), quoted(.names), quoted(.known))]
    UnknownClasses { names: Vec<String>, known: Vec<String> },
}

impl DataError {
    pub fn new(path: &Path, line: Option<usize>, kind: DataErrorKind) -> DataError {
        DataError { path: path.to_path_buf(), line, kind }
    }

    /// An error on a given 1-based line of `path`.
    pub fn at(path: &Path, line: usize, kind: DataErrorKind) -> DataError {
        DataError::new(path, Some(line), kind)
    }

    /// An error about `path` as a whole.
    pub fn file(path: &Path, kind: DataErrorKind) -> DataError {
        DataError::new(path, None, kind)
    }
}

/// `FILE:LINE` or `FILE`.
struct Location<'a>(&'a Path, Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(line) => write!(f, "{}:{line}", self.0.display()),
            None => write!(f, "{}", self.0.display()),
        }
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}
