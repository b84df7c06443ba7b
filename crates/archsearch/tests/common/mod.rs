//! Helpers shared by the end-to-end tests: the binary, run and checked.

#![allow(dead_code)]

use std::process::Command;

/// The `archsearch` binary under test, logging errors only.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_archsearch"));
    c.env("ARCHSEARCH_LOG", "error");
    c
}

/// Runs the binary, asserts success, returns its standard output.
pub fn run_ok(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the binary, asserts failure, returns its standard error.
pub fn stderr_of(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
