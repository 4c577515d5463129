//! Builds the C examples (`examples/c`, `-Wall -Wextra -Werror`, ASan +
//! UBSan) against the freshly built `libkeypipe.a` and runs them: in one
//! process, as two processes (one site each), and under valgrind (which,
//! unlike the sanitizers, also sees the library's own memory accesses).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, require};

fn examples() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/c")
}

fn build_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-examples")
}

/// `make -C examples/c <targets>` with the library and build directory.
fn make(targets: &[&str], env: &[(&str, String)]) -> (bool, String) {
    common::make(Path::new(examples()), &build_dir(), targets, env)
}

#[test]
fn c_examples_build_and_pass_under_sanitizers() {
    let ledgers = tempfile::tempdir().unwrap();
    let (ok, text) = make(
        &["run"],
        &[
            ("KP_PORT_A", free_port().to_string()),
            ("KP_PORT_B", free_port().to_string()),
            ("KP_DATA_DIR", ledgers.path().display().to_string()),
        ],
    );
    assert!(ok, "C examples failed:\n{text}");
    for line in [
        "identical on both nodes",
        "api_errors: all checks passed",
        "over the network link",
        "kms_local: 300 chunks",
        "shutdown_race: both frees woke their blocked calls",
        "kp_get_key 32 B, 1 thread",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    println!("{text}");
}

/// Runs `kms_site <role>` with `env`, as its own process.
fn site(exe: &Path, role: &str, env: &[(&str, String)]) -> std::process::Child {
    Command::new(exe)
        .arg(role)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kms_site runs")
}

fn wait(child: std::process::Child, deadline: Instant) -> (bool, String) {
    let mut child = child;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn two_sites_each_embed_a_node_and_a_kms_side_and_read_identical_key() {
    let exe = build_dir().join("kms_site");
    let (ok, text) = make(&[exe.to_str().unwrap()], &[]);
    assert!(ok, "build failed:\n{text}");
    let work = tempfile::tempdir().unwrap();
    let chunks = 1500usize;
    let common: Vec<(&str, String)> = vec![
        ("KP_PORT_A", free_port().to_string()),
        ("KP_PORT_B", free_port().to_string()),
        ("KP_KMS_A", free_port().to_string()),
        ("KP_KMS_B", free_port().to_string()),
        (
            "KP_KSID_FILE",
            work.path().join("ksid").display().to_string(),
        ),
        (
            "KP_DONE_FILE",
            work.path().join("done").display().to_string(),
        ),
        ("KP_CHUNKS", chunks.to_string()),
    ];
    let mut children = Vec::new();
    for role in ["leader", "follower"] {
        let dir = work.path().join(role);
        std::fs::create_dir(&dir).unwrap();
        let mut env = common.clone();
        env.push(("KP_DATA_DIR", dir.display().to_string()));
        env.push((
            "KP_OUT",
            work.path()
                .join(format!("{role}.keys"))
                .display()
                .to_string(),
        ));
        children.push(site(&exe, role, &env));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let results: Vec<_> = children.into_iter().map(|c| wait(c, deadline)).collect();
    for (ok, text) in &results {
        assert!(
            ok,
            "a site failed:\n{}\n---\n{}",
            results[0].1, results[1].1
        );
        assert!(text.contains("pushed to this process's KMS side"), "{text}");
    }
    let a = std::fs::read(work.path().join("leader.keys")).unwrap();
    let b = std::fs::read(work.path().join("follower.keys")).unwrap();
    assert_eq!(a.len(), chunks * 32);
    assert!(a == b, "the two sites read different key for some index");
    let mut seen = std::collections::HashSet::new();
    for chunk in a.chunks(32) {
        assert!(
            seen.insert(chunk.to_vec()),
            "a key value was delivered twice"
        );
    }
    println!("{}\n{}", results[0].1, results[1].1);
}

#[test]
fn uninitialised_buffers_and_frees_racing_blocked_calls_are_clean_under_valgrind() {
    // valgrind checks the library's own accesses too: a free racing a
    // blocked kp_get_key was a use-after-free before (security review F17).
    require("valgrind");
    let (ok, text) = make(&["valgrind"], &[]);
    assert!(ok, "valgrind run failed:\n{text}");
    assert!(text.contains("kms_local: 40 chunks"), "{text}");
    assert!(
        text.contains("shutdown_race: both frees woke their blocked calls"),
        "{text}"
    );
    println!("{text}");
}
