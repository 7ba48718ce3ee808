//! `calm data stats` end to end: the real CREHate train split as a table and as JSON, a generic
//! table, and a malformed file's one-line error.

use std::path::PathBuf;
use std::process::Command;

fn calm(args: &[&str]) -> (bool, Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_calm")).args(args).output().expect("calm runs");
    (
        o.status.success(),
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn train_split() -> PathBuf {
    calm_data::crehate_dir().unwrap().join("CREHate_train.csv")
}

const COUNTRIES: [&str; 5] = ["Australia", "United_States", "United_Kingdom", "South_Africa", "Singapore"];

#[test]
fn data_stats_tabulates_crehate() {
    let (ok, _, stdout, stderr) = calm(&["data", "stats", train_split().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let header = stdout.lines().next().unwrap();
    assert!(header.split_whitespace().eq(["culture", "not", "hate", "hate", "total"]), "{stdout}");
    for country in COUNTRIES {
        let row = stdout.lines().find(|l| l.split_whitespace().next() == Some(country));
        let row = row.unwrap_or_else(|| panic!("no row for {country}: {stdout}"));
        assert!(row.ends_with(" 1106"), "{row}");
    }
    assert!(stdout.lines().any(|l| l.split_whitespace().eq(["total", "3023", "2507", "5530"])), "{stdout}");
    assert!(stdout.contains("1106 texts, 5530 samples"), "{stdout}");
}

#[test]
fn data_stats_json_parses() {
    let (ok, _, stdout, stderr) = calm(&["data", "stats", train_split().to_str().unwrap(), "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["texts"], 1106);
    assert_eq!(v["samples"], 5530);
    assert_eq!(v["classes"], serde_json::json!(["not hate", "hate"]));
    let names: Vec<&str> = v["cultures"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, COUNTRIES);
    assert_eq!(v["cultures"][0]["counts"], serde_json::json!([573, 533]));
}

#[test]
fn data_stats_reads_a_table_with_column_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    std::fs::write(
        &path,
        "{\"s\": \"a\", \"c\": \"KR\", \"y\": \"rude\"}\n{\"s\": \"b\", \"c\": \"JP\", \"y\": \"ok\"}\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (ok, _, stdout, stderr) = calm(&["data", "stats", p, "--text", "s", "--culture", "c", "--label", "y"]);
    assert!(ok, "{stderr}");
    assert!(stdout.lines().next().unwrap().split_whitespace().eq(["culture", "ok", "rude", "total"]), "{stdout}");
    // The three flags go together.
    let (ok, code, _, stderr) = calm(&["data", "stats", p, "--text", "s"]);
    assert!(!ok && code == Some(2), "{stderr}");
}

#[test]
fn data_stats_bad_file_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    let header = "ID,Text,Australia_Hate,United_States_Hate,United_Kingdom_Hate,South_Africa_Hate,Singapore_Hate";
    std::fs::write(&path, format!("{header}\na,\"x\ny\",0,0,0,0,0\nb,z,0,1,0.5,0,0\n")).unwrap();
    let (ok, code, stdout, stderr) = calm(&["data", "stats", path.to_str().unwrap()]);
    assert!(!ok && code == Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad.csv:4: column `United_Kingdom_Hate`: label `0.5` is not 0 or 1"), "{stderr}");
}

/// A table is read whole: one that would not fit in memory is refused before it is read,
/// naming the file (here under a 64 KiB budget, `CALM_MEMORY_LIMIT`).
#[test]
fn a_table_too_large_for_memory_is_refused_before_it_is_read() {
    let train = train_split();
    let o = Command::new(env!("CARGO_BIN_EXE_calm"))
        .args(["data", "stats", train.to_str().unwrap()])
        .env("CALM_MEMORY_LIMIT", "64K")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("CREHate_train.csv") && stderr.contains("CALM_MEMORY_LIMIT"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
