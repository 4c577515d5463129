//! The `keypipe` binary as a user runs it: the embedded default, the
//! printed configuration, and SIGTERM in the middle of a push run.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// The binary under test; `KEYPIPE_TEST_BIN` runs these tests against
/// another build (e.g. an older one, to see a test fail before a fix).
fn keypipe() -> Command {
    Command::new(
        std::env::var_os("KEYPIPE_TEST_BIN").unwrap_or(env!("CARGO_BIN_EXE_keypipe").into()),
    )
}

/// Spawns `keypipe serve args…` and returns it with its `listening` lines.
fn serve(args: &[&str]) -> (Child, Vec<String>) {
    // The default store directory is ./keypipe-data: run where it can go,
    // a directory of this run's own (two processes never share a ledger).
    serve_in(&tempfile::tempdir().unwrap().keep(), args)
}

/// Tests of the embedded default (fixed ports) run one at a time.
static DEFAULT_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Spawns `keypipe serve args…` in `cwd`.
fn serve_in(cwd: &std::path::Path, args: &[&str]) -> (Child, Vec<String>) {
    let mut child = keypipe()
        .current_dir(cwd)
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
        text
    });
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let errors = errors.join().unwrap();
            panic!("keypipe exited early: {lines:?}\n{errors}");
        }
        if line.starts_with("try:") {
            break;
        }
        lines.push(line.trim_end().to_owned());
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, lines)
}

/// SIGTERM, then the exit status (at most 20 s).
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid, which we have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "keypipe did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn print_default_config_reproduces_the_default() {
    let out = keypipe()
        .args(["serve", "--print-default-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, keypipe_server::config::DEFAULT_CONFIG);
    let config = keypipe_server::config::Config::from_toml(&text).unwrap();
    let listens: Vec<String> = config.nodes.iter().map(|n| n.listen.to_string()).collect();
    assert_eq!(listens, ["127.0.0.1:7004", "127.0.0.1:7005"]);
    // A bad file is refused with a message naming the file and the key.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("max_connections", "max_conections")).unwrap();
    let out = keypipe()
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.toml") && err.contains("max_conections"),
        "{err}"
    );
}

#[test]
fn default_serve_runs_a_whole_link_and_stops_on_sigterm() {
    let _ports = DEFAULT_PORTS.lock().unwrap_or_else(|p| p.into_inner());
    let cwd = tempfile::tempdir().unwrap();
    let (child, lines) = serve_in(cwd.path(), &[]);
    let mut child = Reaper(child);
    assert_eq!(
        lines,
        [
            "listening node-a http://127.0.0.1:7004",
            "listening node-a keytalk https://127.0.0.1:4443 (RCDP, public API), http://127.0.0.1:8000 (CA, downloads)",
            "listening node-a etsi014 https://127.0.0.1:7014 (SAE client certificates)",
            "listening node-b http://127.0.0.1:7005",
            "listening node-b etsi014 https://127.0.0.1:7015 (SAE client certificates)"
        ]
    );
    let (a, b) = (
        "127.0.0.1:7004".parse().unwrap(),
        "127.0.0.1:7005".parse().unwrap(),
    );
    wait_healthy(a);
    wait_healthy(b);
    // The README walk-through: open-connect, get-key, close on node A,
    // pushing to node A's own KMS side.
    let ksid = open_stream(
        a,
        b,
        "http://127.0.0.1:7004",
        "http://127.0.0.1:7005",
        json!({"key_chunk_size": 32}),
    );
    start_pushing(a, ksid, None);
    start_pushing(b, ksid, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let received = |node| metric(node, "keypipe_kms_received_chunks_total");
    while received(a) < 100.0 || received(b) < 100.0 {
        assert!(Instant::now() < deadline, "no key arrived at the KMS sides");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        request(a, "PUT", CLOSE, Some(&json!({"key_stream_id": ksid})))
            .unwrap()
            .status,
        204
    );
    readme_keytalk_enrolment(cwd.path());
    readme_etsi014(cwd.path());
    assert!(terminate(&mut child.0).success());
}

/// Runs a shell block of the README (the one after `<!-- {marker}`) in
/// `cwd`, with the built `keypipe` on the PATH; its standard output.
fn readme_block(marker: &str, cwd: &std::path::Path) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split(&format!("<!-- {marker}"))
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("the README's {marker} block"));
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_keypipe"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(cwd)
        .env("PATH", path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The README's ETSI 014 lines: two keys on node A, the second of them
/// by id on node B, the same bytes.
fn readme_etsi014(cwd: &std::path::Path) {
    let text = readme_block("etsi014-demo", cwd);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let issued: Value = serde_json::from_str(lines[0]).unwrap();
    let fetched: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(issued["keys"].as_array().unwrap().len(), 2, "{text}");
    assert_eq!(fetched["keys"][0], issued["keys"][1], "{text}");
    assert_eq!(fetched["keys"].as_array().unwrap().len(), 1, "{text}");
}

/// Runs the README's KeyTalk enrolment (the shell block after the
/// `keytalk-demo` marker) against the default server, in `cwd`.
fn readme_keytalk_enrolment(cwd: &std::path::Path) {
    let text = readme_block("keytalk-demo", cwd);
    assert!(text.contains(r#""version":"2.4.1""#), "{text}");
    assert!(text.contains(r#""auth-status":"OK""#), "{text}");
    assert!(text.ends_with("alice.pem: key decrypts\n"), "{text}");
}

#[test]
fn sigterm_during_a_push_run_loses_no_acknowledged_key() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let config = dir.path().join("pair.toml");
    std::fs::write(&config, pair_toml(pa, pb, pb, pa, "")).unwrap();
    let (mut child, lines) = serve(&["--config", config.to_str().unwrap()]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (a, b) = (
        format!("127.0.0.1:{pa}").parse().unwrap(),
        format!("127.0.0.1:{pb}").parse().unwrap(),
    );
    wait_healthy(a);
    wait_healthy(b);
    let (kms_a, kms_b) = (TestKms::start(), TestKms::start());
    let ksid = push_stream(a, b, &kms_a, &kms_b, json!({"key_chunk_size": 32}));
    kms_a.wait_for(&ksid, 2000, 30);
    kms_b.wait_for(&ksid, 2000, 30);
    let pid = child.id() as i32;
    let status = terminate(&mut child);
    assert!(status.success(), "exit status {status:?}");
    // SAFETY: signal 0 only checks whether the (reaped) pid still exists.
    assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "no process left behind");
    // Every acknowledged chunk is there, contiguous from 0, identical on
    // both sides, none twice.
    let common = assert_identical(&kms_a, &kms_b, &ksid, 32);
    assert!(common >= 2000);
    for kms in [&kms_a, &kms_b] {
        let log = kms.log.lock().unwrap();
        assert_eq!((log.repeats, log.conflicts), (0, 0));
        assert_eq!(*log.keys[&ksid].keys().next().unwrap(), 0);
    }
    // Pushing stopped with the process.
    let n = kms_a.indexes(&ksid).len();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(kms_a.indexes(&ksid).len(), n);
}

/// Kills the server when a test fails half-way (no process left behind).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every key value `kms` received for `ksid`.
fn values(kms: &TestKms, ksid: &uuid::Uuid) -> Vec<Vec<u8>> {
    kms.log.lock().unwrap().keys[ksid]
        .values()
        .cloned()
        .collect()
}

#[test]
fn the_default_server_never_hands_out_the_same_key_after_a_restart() {
    // F1, as a new user meets it: open a stream, record its key, stop the
    // server (SIGTERM, then kill -9), start it again, open a new stream:
    // nothing of the new key is key delivered before, and the old stream
    // goes on by itself.
    let _ports = DEFAULT_PORTS.lock().unwrap_or_else(|p| p.into_inner());
    let cwd = tempfile::tempdir().unwrap();
    let (a, b) = (
        "127.0.0.1:7004".parse().unwrap(),
        "127.0.0.1:7005".parse().unwrap(),
    );
    let (kms_a, kms_b) = (TestKms::start(), TestKms::start());
    let mut seen = std::collections::HashSet::new();
    let mut first = None;
    for stop in ["TERM", "KILL", "KILL"] {
        let (child, _) = serve_in(cwd.path(), &[]);
        let mut child = Reaper(child);
        wait_healthy(a);
        wait_healthy(b);
        let ksid = push_stream(a, b, &kms_a, &kms_b, json!({"key_chunk_size": 32}));
        kms_a.wait_for(&ksid, 500, 30);
        kms_b.wait_for(&ksid, 500, 30);
        for v in values(&kms_a, &ksid).into_iter().take(500) {
            assert!(!seen.contains(&v), "after {stop}: key delivered again");
        }
        if let Some(old) = first {
            // The stream of the first run is pushed again, no open needed.
            let n = kms_a.indexes(&old).len();
            kms_a.wait_for(&old, n + 200, 30);
            kms_b.wait_for(&old, n + 200, 30);
        }
        first.get_or_insert(ksid);
        match stop {
            "TERM" => assert!(terminate(&mut child.0).success()),
            _ => {
                child.0.kill().unwrap();
                child.0.wait().unwrap();
            }
        }
        for kms in [&kms_a, &kms_b] {
            for v in values(kms, &ksid) {
                assert_eq!(v.len(), 32);
            }
        }
        for v in values(&kms_a, &ksid) {
            assert!(
                seen.insert(v),
                "{stop}: key delivered again after a restart"
            );
        }
    }
    let old = first.unwrap();
    let mut all = std::collections::HashSet::new();
    for v in values(&kms_a, &old) {
        assert!(all.insert(v), "the resumed stream repeated key");
    }
    for kms in [&kms_a, &kms_b] {
        let log = kms.log.lock().unwrap();
        assert_eq!((log.repeats, log.conflicts), (0, 0));
    }
}

#[test]
fn the_old_public_demo_secrets_are_refused_unless_on_loopback_with_demo() {
    let dir = tempfile::tempdir().unwrap();
    let demo = keypipe_server::config::DEMO_SECRETS;
    let (pa, pb) = (free_port(), free_port());
    let toml = pair_toml(pa, pb, pb, pa, "")
        .replace(&"11".repeat(32), demo[0])
        .replace(&"22".repeat(32), demo[1]);
    let config = dir.path().join("demo.toml");
    std::fs::write(&config, &toml).unwrap();
    let run = |path: &std::path::Path, extra: &[&str]| {
        keypipe()
            .current_dir(dir.path())
            .args(["serve", "--config"])
            .arg(path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&config, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("public demo secrets") && err.contains("--demo"),
        "{err}"
    );
    // Off loopback plain HTTP is refused unless asked for, naming the key.
    let open = dir.path().join("open.toml");
    std::fs::write(
        &open,
        toml.replacen(&format!("127.0.0.1:{pa}\""), &format!("0.0.0.0:{pa}\""), 1),
    )
    .unwrap();
    let out = run(&open, &["--demo"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.0.0.0") && err.contains("[node.tls]") && err.contains("insecure_plaintext"),
        "{err}"
    );
    // Off loopback, --demo does not help.
    std::fs::write(
        &open,
        toml.replacen(
            &format!("127.0.0.1:{pa}\""),
            &format!("0.0.0.0:{pa}\"\ninsecure_plaintext = true"),
            1,
        ),
    )
    .unwrap();
    let out = run(&open, &["--demo"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("only for configurations whose listeners are all on loopback")
    );
    // On loopback with --demo: it runs.
    let (mut child, lines) = serve_in(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--demo"],
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(terminate(&mut child).success());
}
