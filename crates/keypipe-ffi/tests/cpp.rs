//! Builds the C++ bindings' example and test (`bindings/cpp`: C++17,
//! `-Wall -Wextra -Werror`, ASan + UBSan) against the freshly built
//! `libkeypipe.a` and runs them. Installs g++ (as root, with apt-get) when
//! there is no C++ compiler, rather than skipping.

use std::path::PathBuf;
use std::process::Command;

/// True when `c++` runs.
fn have_cxx() -> bool {
    Command::new("c++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when this process runs as root.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `apt-get <args>`, non-interactive; true on success.
fn apt_get(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `c++` exists: installs g++ when it does not.
fn ensure_cxx() {
    if have_cxx() {
        return;
    }
    assert!(
        is_root(),
        "no C++ compiler (`c++`) and not root: install g++ (apt-get install -y g++) to run this test"
    );
    if !apt_get(&["install", "-y", "g++"]) {
        assert!(apt_get(&["update"]), "apt-get update failed");
        assert!(
            apt_get(&["install", "-y", "g++"]),
            "apt-get install -y g++ failed"
        );
    }
    assert!(have_cxx(), "`c++` still missing after installing g++");
}

#[test]
fn cpp_bindings_build_and_pass_under_sanitizers() {
    ensure_cxx();
    // `cargo test` leaves the staticlib beside this test binary
    // (target/<profile>/deps); `cargo build` also copies it one level up.
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let libdir: PathBuf = [deps, deps.parent().unwrap()]
        .into_iter()
        .find(|d| d.join("libkeypipe.a").exists())
        .unwrap_or_else(|| panic!("libkeypipe.a not built near {}", deps.display()))
        .to_path_buf();
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
