//! What the CLI tests share: running the `calm` binary and reading what it said.

#![allow(dead_code)] // each test crate uses its own share of these

use std::path::Path;
use std::process::Command;

/// Runs `command`: whether it succeeded, its stdout and its stderr.
pub fn output(command: &mut Command) -> (bool, String, String) {
    let o = command.output().expect("calm runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
