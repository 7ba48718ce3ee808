//! Generic CSV and JSONL tables: numeric and string labels, cultures in order of first
//! appearance, shared texts, and every malformed-file case.

use std::path::PathBuf;

use calm_data::{load, load_table, DataError, DataErrorKind, Dataset, TableSpec};

fn spec() -> TableSpec {
    TableSpec { text: "sentence".into(), culture: "country".into(), label: "rating".into() }
}

/// Writes `contents` to a file named `name` in a fresh directory.
fn file(name: &str, contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}

fn read(name: &str, contents: &str) -> Result<Dataset, DataError> {
    let (_dir, path) = file(name, contents);
    load_table(&path, &spec())
}

/// The error for `contents`, checking it names the file and `line`.
fn error(name: &str, contents: &str, line: Option<usize>) -> DataError {
    let err = read(name, contents).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.line, line, "{msg}");
    let at = match line {
        Some(l) => format!("{name}:{l}: "),
        None => format!("{name}: "),
    };
    assert!(msg.contains(&at), "`{msg}` names {at}");
    err
}

fn labels(d: &Dataset) -> Vec<u32> {
    d.samples.iter().map(|s| s.label).collect()
}

fn cultures(d: &Dataset) -> Vec<u32> {
    d.samples.iter().map(|s| s.culture).collect()
}

#[test]
fn csv_numeric_labels() {
    let csv = "id,sentence,country,rating\n\
               1,good day,Korea,3\n\
               2,\"bad\nday\",Japan,0.0\n\
               3,good day,Japan,1\n";
    let d = read("t.csv", csv).unwrap();
    assert_eq!(d.cultures, ["Korea", "Japan"]);
    assert_eq!(d.classes, ["0", "1", "2", "3"]);
    assert_eq!(d.texts, ["good day", "bad\nday"]);
    assert_eq!(labels(&d), [3, 0, 1]);
    assert_eq!(cultures(&d), [0, 1, 1]);
    assert_eq!(d.samples.iter().map(|s| s.text).collect::<Vec<_>>(), [0, 1, 0]);
    assert_eq!(d.samples.iter().map(|s| s.line).collect::<Vec<_>>(), [2, 3, 5]);
    let s = d.stats();
    assert_eq!(s.cultures[1].counts, [1, 1, 0, 0]);
    assert_eq!(s.texts, 2);
}

#[test]
fn csv_string_labels_are_sorted() {
    let csv = "sentence,country,rating\nx,US,offensive\ny,UK,fine\nz,US,2\n";
    let d = read("t.CSV", csv).unwrap();
    assert_eq!(d.classes, ["2", "fine", "offensive"]);
    assert_eq!(labels(&d), [2, 1, 0]);
    assert_eq!(d.cultures, ["US", "UK"]);
}

#[test]
fn jsonl_numeric_and_string_labels() {
    let jsonl = "{\"sentence\": \"a\", \"country\": \"KR\", \"rating\": 2}\n\
                 \n\
                 {\"sentence\": \"b\", \"country\": \"JP\", \"rating\": \"0\", \"extra\": [1]}\r\n\
                 {\"sentence\": \"a\", \"country\": \"JP\", \"rating\": 1.0}\n";
    let d = read("t.jsonl", jsonl).unwrap();
    assert_eq!(d.classes, ["0", "1", "2"]);
    assert_eq!(labels(&d), [2, 0, 1]);
    assert_eq!(d.cultures, ["KR", "JP"]);
    assert_eq!(d.texts, ["a", "b"]);
    assert_eq!(d.samples.iter().map(|s| s.line).collect::<Vec<_>>(), [1, 3, 4]);

    let jsonl = "{\"sentence\": \"a\", \"country\": \"KR\", \"rating\": \"rude\"}\n\
                 {\"sentence\": \"b\", \"country\": 7, \"rating\": \"polite\"}\n";
    let d = read("t.jsonl", jsonl).unwrap();
    assert_eq!(d.classes, ["polite", "rude"]);
    assert_eq!(labels(&d), [1, 0]);
    assert_eq!(d.cultures, ["KR", "7"]);
}

#[test]
fn load_with_spec_reads_tables() {
    let (_dir, path) = file("t.csv", "sentence,country,rating\nx,US,1\n");
    let d = load(&path, Some(&spec())).unwrap();
    assert_eq!(d.samples.len(), 1);
}

#[test]
fn unknown_extension_is_an_error() {
    for name in ["t.tsv", "t"] {
        let err = error(name, "sentence,country,rating\nx,US,1\n", None);
        assert!(matches!(err.kind, DataErrorKind::Extension), "{err}");
    }
}

#[test]
fn csv_errors_name_lines() {
    let err = error("t.csv", "sentence,nation,score\nx,US,1\n", Some(1));
    assert!(err.to_string().contains("missing columns `country`, `rating`"), "{err}");
    let err = error("t.csv", "sentence,country,rating\nx,US,1\n\"\",UK,0\n", Some(3));
    assert!(err.to_string().ends_with("column `sentence`: empty text"), "{err}");
    let err = error("t.csv", "sentence,country,rating\nx,US,1\ny, ,0\n", Some(3));
    assert!(err.to_string().ends_with("column `country`: empty value"), "{err}");
    let err = error("t.csv", "sentence,country,rating\nx,US,1\ny,UK,\n", Some(3));
    assert!(err.to_string().ends_with("column `rating`: empty value"), "{err}");
    let err = error("t.csv", "sentence,country,rating\nx,US,1\ny,UK\n", Some(3));
    assert!(matches!(err.kind, DataErrorKind::FieldCount { expected: 3, found: 2 }), "{err}");
    error("t.csv", "", None);
    error("t.csv", "sentence,country,rating\n", None);
}

#[test]
fn numeric_labels_must_be_non_negative_integers() {
    for bad in ["0.5", "-1", "1e6"] {
        let err = error("t.csv", &format!("sentence,country,rating\nx,US,1\ny,UK,{bad}\n"), Some(3));
        assert!(err.to_string().contains(&format!("column `rating`: label `{bad}` is not a non-negative")), "{err}");
    }
}

#[test]
fn jsonl_errors_name_lines() {
    let ok = "{\"sentence\": \"a\", \"country\": \"KR\", \"rating\": 1}\n";
    let cases: [(&str, &str); 9] = [
        ("{\"sentence\": \"b\", \"country\": \"KR\", \"rating\": 1\n", "not a JSON object: EOF while parsing"),
        ("[1, 2]\n", "not a JSON object: found an array"),
        ("{\"sentence\": \"b\", \"rating\": 1}\n", "missing field `country`"),
        ("{\"sentence\": \"b\", \"country\": null, \"rating\": 1}\n", "missing field `country`"),
        ("{\"sentence\": \" \", \"country\": \"KR\", \"rating\": 1}\n", "column `sentence`: empty text"),
        ("{\"sentence\": 5, \"country\": \"KR\", \"rating\": 1}\n", "field `sentence` is a number, expected a string"),
        ("{\"sentence\": \"b\", \"country\": \"KR\", \"rating\": true}\n", "field `rating` is a boolean"),
        ("{\"sentence\": \"b\", \"country\": \"\", \"rating\": 1}\n", "column `country`: empty value"),
        ("{\"sentence\": \"b\", \"country\": \"KR\", \"rating\": -2}\n", "label `-2` is not a non-negative"),
    ];
    for (bad, expected) in cases {
        let err = error("t.jsonl", &format!("{ok}\n{bad}{ok}"), Some(3));
        assert!(err.to_string().contains(expected), "{bad}: {err}");
    }
    error("t.jsonl", " \n\n", None);
    let (_dir, path) = file("t.jsonl", "");
    std::fs::write(&path, b"{\"sentence\": \"a\", \"country\": \"KR\", \"rating\": 1}\n\"\xff\"\n").unwrap();
    let err = load_table(&path, &spec()).unwrap_err();
    assert!(matches!(err.kind, DataErrorKind::Utf8) && err.line == Some(2), "{err}");
}
