//! The real CREHate splits, with counts computed independently (Python's `csv` module), and
//! every malformed-file case on small files.

use std::path::PathBuf;

use calm_data::{load, load_crehate, DataError, DataErrorKind, Dataset};

fn split(name: &str) -> PathBuf {
    calm_data::crehate_dir().unwrap().join(name)
}

const CULTURES: [&str; 5] = ["Australia", "United_States", "United_Kingdom", "South_Africa", "Singapore"];

/// Per culture (in column order): (not hate, hate).
fn check_counts(d: &Dataset, posts: usize, per_culture: [(usize, usize); 5]) {
    assert_eq!(d.cultures, CULTURES);
    assert_eq!(d.classes, ["not hate", "hate"]);
    assert_eq!(d.texts.len(), posts);
    assert_eq!(d.samples.len(), 5 * posts);
    let s = d.stats();
    for (row, (name, (no, yes))) in s.cultures.iter().zip(CULTURES.iter().zip(per_culture)) {
        assert_eq!(row.name, *name);
        assert_eq!(row.counts, [no, yes], "{name}");
        assert_eq!(row.total, posts);
    }
    let no: usize = per_culture.iter().map(|c| c.0).sum();
    let yes: usize = per_culture.iter().map(|c| c.1).sum();
    assert_eq!(s.totals, [no, yes]);
    // Five samples a post, cultures in column order.
    for (i, chunk) in d.samples.chunks(5).enumerate() {
        assert!(chunk.iter().all(|s| s.text == i && s.line == chunk[0].line));
        assert_eq!(chunk.iter().map(|s| s.culture).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    }
}

#[test]
fn train_split_counts() {
    let d = load_crehate(&split("CREHate_train.csv")).unwrap();
    check_counts(&d, 1106, [(573, 533), (657, 449), (604, 502), (623, 483), (566, 540)]);
    assert_eq!(d.stats().totals, [3023, 2507]);
    assert!(d.texts[0].starts_with("Leaving aside the fucking BIZARRE comment"));
    assert!(d.texts[1105].starts_with("Black ' females ' fighting"));
    // Records start lines, multi-line quoted texts (with blank lines inside) counted.
    let starts: Vec<usize> = d.samples.iter().step_by(5).map(|s| s.line).collect();
    assert_eq!(starts[..10], [2, 3, 4, 5, 6, 7, 8, 10, 12, 13]);
    assert_eq!(starts[1105], 1407);
    assert!(d.texts[7].contains('\n'), "multi-line text kept whole: {:?}", d.texts[7]);
    // The last post's labels: 1.0,0.0,1.0,0.0,0.0.
    let last: Vec<u32> = d.samples[5 * 1105..].iter().map(|s| s.label).collect();
    assert_eq!(last, [1, 0, 1, 0, 0]);
}

#[test]
fn valid_split_counts() {
    let d = load(&split("CREHate_valid.csv"), None).unwrap();
    check_counts(&d, 237, [(133, 104), (144, 93), (132, 105), (138, 99), (119, 118)]);
    assert_eq!(d.stats().totals, [666, 519]);
    let starts: Vec<usize> = d.samples.iter().step_by(5).map(|s| s.line).collect();
    assert_eq!(starts[..10], [2, 3, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(starts[236], 315);
}

#[test]
fn take_gives_first_posts() {
    let d = load_crehate(&split("CREHate_valid.csv")).unwrap();
    let t = d.take(3);
    assert_eq!(t.texts, d.texts[..3]);
    assert_eq!(t.samples, d.samples[..15]);
}

#[test]
fn remap_to_checkpoint_cultures() {
    let mut d = load_crehate(&split("CREHate_valid.csv")).unwrap();
    let before = d.stats();
    let names: Vec<String> = ["Singapore", "South_Africa", "United_Kingdom", "United_States", "Australia", "Canada"]
        .map(String::from)
        .into();
    d.remap_cultures(&names).unwrap();
    let after = d.stats();
    assert_eq!(after.cultures[0].counts, before.cultures[4].counts);
    assert_eq!(after.cultures[4].counts, before.cultures[0].counts);
    assert_eq!(after.cultures[5].total, 0);
    let err = d.remap_cultures(&names[1..]).unwrap_err();
    assert!(err.to_string().contains("culture `Singapore` not among"), "{err}");
}

// ---- malformed files ----

const HEADER: &str = "ID,Text,Australia_Hate,United_States_Hate,United_Kingdom_Hate,South_Africa_Hate,Singapore_Hate\n";

fn load_str(contents: &str) -> Result<Dataset, DataError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, contents).unwrap();
    load_crehate(&path)
}

/// The error for `contents`, checking it names the file and `line`.
fn error(contents: &str, line: Option<usize>) -> DataError {
    let err = load_str(contents).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.line, line, "{msg}");
    let at = match line {
        Some(l) => format!("bad.csv:{l}: "),
        None => "bad.csv: ".to_string(),
    };
    assert!(msg.contains(&at), "`{msg}` names {at}");
    err
}

#[test]
fn accepts_integer_labels_and_crlf() {
    let d = load_str(&format!("{HEADER}a,\"one\r\ntwo\",0,1,0.0,1.0,0\r\nb,three,1,1,1,1,1\r\n")).unwrap();
    assert_eq!(d.texts, ["one\r\ntwo", "three"]);
    assert_eq!(d.samples.iter().map(|s| s.label).collect::<Vec<_>>(), [0, 1, 0, 1, 0, 1, 1, 1, 1, 1]);
    assert_eq!(d.samples[5].line, 4);
}

#[test]
fn lines_with_crlf_ends_and_blank_lines() {
    let crlf = format!("{HEADER}a,x,0,0,0,0,0\nb,\"y\nz\",0,0,0,0,0\n\nc,w,0,0,0,0,0\n").replace('\n', "\r\n");
    let d = load_str(&crlf).unwrap();
    let starts: Vec<usize> = d.samples.iter().step_by(5).map(|s| s.line).collect();
    assert_eq!(starts, [2, 3, 6]);
    error(&format!("{crlf}d,v,0,0,0,0\r\n"), Some(7));
    error(&format!("{HEADER}\n\na,x,0,0,0,0,0\n\n\nb,y,0,0,2,0,0\n"), Some(7));
}

#[test]
fn byte_order_mark_and_other_columns_are_fine() {
    let header = HEADER.replace("ID,", "\u{feff}ID,Source,");
    let d = load_str(&format!("{header}a,web,x,0,1,0,1,0\n")).unwrap();
    assert_eq!(d.texts, ["x"]);
    assert_eq!(d.samples.len(), 5);
}

#[test]
fn cultures_follow_column_order() {
    let header = "ID,Text,Singapore_Hate,Australia_Hate,United_States_Hate,United_Kingdom_Hate,South_Africa_Hate\n";
    let d = load_str(&format!("{header}a,x,1,0,0,0,0\n")).unwrap();
    assert_eq!(d.cultures, ["Singapore", "Australia", "United_States", "United_Kingdom", "South_Africa"]);
    assert_eq!(d.samples[0].label, 1);
    assert_eq!(d.samples[0].culture, 0);
}

#[test]
fn duplicate_ids_are_allowed() {
    let d = load_str(&format!("{HEADER}a,x,0,0,0,0,0\na,y,1,1,1,1,1\n")).unwrap();
    assert_eq!(d.texts.len(), 2);
}

#[test]
fn missing_columns_are_named() {
    let err = error("ID,Text,Australia_Hate,United_States_Hate\na,x,0,0\n", Some(1));
    let msg = err.to_string();
    assert!(msg.contains("missing columns `United_Kingdom_Hate`, `South_Africa_Hate`, `Singapore_Hate`"), "{msg}");
    let err = error(&format!("{}a,x,0,0,0,0,0\n", HEADER.replace("Text", "Post")), Some(1));
    assert!(matches!(&err.kind, DataErrorKind::MissingColumns { names, .. } if names == &["Text"]));
    assert!(err.to_string().contains("missing column `Text`"), "{err}");
}

#[test]
fn duplicate_column_is_an_error() {
    let err = error(&HEADER.replace("ID,", "ID,Text,"), Some(1));
    assert!(err.to_string().contains("column `Text` appears more than once"), "{err}");
}

#[test]
fn bad_labels_name_line_and_column() {
    for bad in ["2", "0.5", "", "yes", "-1", "1.00"] {
        let err = error(&format!("{HEADER}a,x,0,0,0,0,0\nb,\"y\nz\",0,0,{bad},0,0\n"), Some(3));
        let msg = err.to_string();
        assert!(msg.contains(&format!("column `United_Kingdom_Hate`: label `{bad}` is not 0 or 1")), "{msg}");
    }
}

#[test]
fn empty_text_is_an_error() {
    let err = error(&format!("{HEADER}a,x,0,0,0,0,0\nb,\"  \n \",0,0,0,0,0\n"), Some(3));
    assert!(err.to_string().ends_with("column `Text`: empty text"), "{err}");
    error(&format!("{HEADER}a,,0,0,0,0,0\n"), Some(2));
}

#[test]
fn wrong_field_counts_are_errors() {
    let err = error(&format!("{HEADER}a,x,0,0,0,0,0\nb,y,0,0,0,0\n"), Some(3));
    assert!(err.to_string().ends_with("row has 6 fields, the header has 7"), "{err}");
    let err = error(&format!("{HEADER}a,x,0,0,0,0,0,0\n"), Some(2));
    assert!(matches!(err.kind, DataErrorKind::FieldCount { expected: 7, found: 8 }));
    // An unterminated quote swallows the rest of the file: one short row, named where it starts.
    error(&format!("{HEADER}a,x,0,0,0,0,0\nb,\"y,0,0,0,0,0\nc,z,0,0,0,0,0\n"), Some(3));
}

#[test]
fn empty_files_are_errors() {
    for contents in ["", "\n\n", "  \n"] {
        let err = error(contents, None);
        assert!(matches!(err.kind, DataErrorKind::Empty), "{contents:?}: {err}");
    }
    let err = error(HEADER, None);
    assert!(matches!(err.kind, DataErrorKind::NoRows), "{err}");
}

#[test]
fn invalid_utf8_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    let mut bytes = format!("{HEADER}a,x,0,0,0,0,0\n").into_bytes();
    bytes.extend_from_slice(b"b,\xff\xfe,0,0,0,0,0\n");
    std::fs::write(&path, bytes).unwrap();
    let err = load_crehate(&path).unwrap_err();
    assert_eq!(err.line, Some(3), "{err}");
    assert!(matches!(err.kind, DataErrorKind::Utf8), "{err}");
}

#[test]
fn unreadable_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.csv");
    let err = load_crehate(&missing).unwrap_err();
    assert!(matches!(err.kind, DataErrorKind::Io(_)));
    assert!(err.to_string().starts_with(&format!("{}: cannot read: ", missing.display())), "{err}");
    let err = load_crehate(dir.path()).unwrap_err();
    assert!(matches!(err.kind, DataErrorKind::Io(_)), "a directory: {err}");
}
