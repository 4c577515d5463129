//! Builds the C++ bindings' example and test (`bindings/cpp`: C++17,
//! `-Wall -Wextra -Werror`, ASan + UBSan) against the freshly built
//! `libkeypipe.a` and runs them. A missing compiler fails the test (never
//! a skip); `scripts/test.sh` installs it.

mod common;

use std::path::PathBuf;

use common::require;

#[test]
fn cpp_bindings_build_and_pass_under_sanitizers() {
    require("c++");
    require("make");
    let build = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cpp");
    let ledgers = tempfile::tempdir().unwrap();
    let (ok, text) = common::make(
        &common::repo().join("bindings/cpp"),
        &build,
        &["run"],
        &[("KP_DATA_DIR", ledgers.path().display().to_string())],
    );
    assert!(ok, "C++ bindings failed:\n{text}");
    assert!(text.contains("cpp example: ok"), "{text}");
    assert!(text.contains("cpp test: all checks passed"), "{text}");
    println!("{text}");
}
