//! Builds the C++ bindings' example and test (`bindings/cpp`: C++17,
//! `-Wall -Wextra -Werror`, ASan + UBSan) against the freshly built
//! `libkeypipe.a` and runs them. A missing compiler fails the test (never
//! a skip); `scripts/test.sh` installs it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{lib_dir, require};

#[test]
fn cpp_bindings_build_and_pass_under_sanitizers() {
    require("c++");
    require("make");
    let libdir = lib_dir();
    let build = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cpp");
    let ledgers = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .arg("-C")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bindings/cpp"))
        .arg(format!("LIBDIR={}", libdir.display()))
        .arg(format!("BUILD={}", build.display()))
        .arg("run")
        .env("KP_DATA_DIR", ledgers.path())
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .output()
        .expect("make is installed");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "C++ bindings failed:\n{text}");
    assert!(text.contains("cpp example: ok"), "{text}");
    assert!(text.contains("cpp test: all checks passed"), "{text}");
    println!("{text}");
}
