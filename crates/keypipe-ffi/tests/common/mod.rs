//! What the C-facing tests share: where `cargo test` left the library, and
//! running a command that must succeed.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the freshly built `libkeypipe.a` and
/// `libkeypipe.so`: beside this test binary (target/<profile>/deps) or
/// one level up, where `cargo build` copies them.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .into_iter()
        .find(|d| d.join("libkeypipe.so").exists() && d.join("libkeypipe.a").exists())
        .unwrap_or_else(|| panic!("libkeypipe not built near {}", deps.display()))
        .to_path_buf()
}

/// Runs `cmd`, which must succeed: its stdout and stderr.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `make -C {dir} LIBDIR=… BUILD={build} {targets}` against the freshly
/// built library, with the sanitizers set to stop at the first error:
/// success, and stdout and stderr.
pub fn make(dir: &Path, build: &Path, targets: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let out = Command::new("make")
        .arg("-C")
        .arg(dir)
        .arg(format!("LIBDIR={}", lib_dir().display()))
        .arg(format!("BUILD={}", build.display()))
        .args(targets)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .output()
        .expect("make is installed");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Panics with how to get `tool` when it does not run (`scripts/test.sh`
/// installs every tool the tests need, through `scripts/test-deps.sh`).
pub fn require(tool: &str) {
    let runs = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        runs,
        "`{tool}` is needed: run the suite with scripts/test.sh (scripts/test-deps.sh installs it)"
    );
}
