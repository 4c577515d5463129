//! Builds the C examples (`examples/c`, `-Wall -Wextra -Werror`, ASan +
//! UBSan) against the freshly built `libkeypipe.a` and runs them.

use std::path::PathBuf;
use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn c_examples_build_and_pass_under_sanitizers() {
    // `cargo test` leaves the staticlib beside this test binary
    // (target/<profile>/deps); `cargo build` also copies it one level up.
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let libdir: PathBuf = [deps, deps.parent().unwrap()]
        .into_iter()
        .find(|d| d.join("libkeypipe.a").exists())
        .unwrap_or_else(|| panic!("libkeypipe.a not built near {}", deps.display()))
        .to_path_buf();
    let build = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-examples");
    let ledgers = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .arg("-C")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/c"))
        .arg(format!("LIBDIR={}", libdir.display()))
        .arg(format!("BUILD={}", build.display()))
        .arg("run")
        .env("KP_PORT_A", free_port().to_string())
        .env("KP_PORT_B", free_port().to_string())
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
    assert!(out.status.success(), "C examples failed:\n{text}");
    assert!(text.contains("identical on both nodes"), "{text}");
    assert!(text.contains("api_errors: all checks passed"), "{text}");
    assert!(text.contains("over the network link"), "{text}");
    println!("{text}");
}
