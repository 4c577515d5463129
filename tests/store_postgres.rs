//! The store in PostgreSQL, shared by several `keypipe serve` processes of
//! one site (`[store] url`) and by the admin CLIs (`--store-url`), end to
//! end over real processes, sockets and a real PostgreSQL server
//! (`scripts/pg.sh`; each test gets a fresh database of its own).
//!
//! It proves that:
//!
//! - keys and access keys made with the CLI serve on every process, and a
//!   ciphertext made by one process decrypts on the other;
//! - a rotation or a disabling made with the CLI is honoured by every
//!   process within the cache's recheck time (bounded here at 1.5 s);
//! - `kill -9` of one process under a mixed load (encryptions on both,
//!   keys created and rotated by the CLI) costs the other no failed
//!   request, and loses nothing that was acknowledged: every ciphertext
//!   answered 200 decrypts, every key and version the CLI reported exists;
//! - a PostgreSQL restart (and a longer outage) is answered 503 with
//!   `Retry-After`, or from the cache, never 500, a wrong plaintext or a
//!   dropped connection, and the service recovers without a keypipe
//!   restart;
//! - the database never holds a secret in clear: `pg_dump` shows no access
//!   secret, key material, plaintext or KEK;
//! - `keypipe store migrate-to` moves an SQLite store to PostgreSQL, where
//!   a server decrypts what was encrypted before, and refuses a target
//!   that is not empty.
//!
//! Both processes of a site run on the same data directory (so on the
//! same KEK, `kek.key`): they serve NCP only, which keeps nothing else
//! there.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keypipe_server::store::testing::fresh_pg_database;
use keypipe_server::store::{KeyStore, Store, StoreOptions};
use serde_json::{Value, json};
use support::ncp::*;
use support::*;

/// One site: a data directory (its `kek.key` is every process's KEK) and
/// a fresh PostgreSQL database.
struct Site {
    dir: tempfile::TempDir,
    url: String,
}

impl Site {
    fn new(label: &str) -> Site {
        Site::on(fresh_pg_database(label))
    }

    fn on(url: String) -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
            url,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `keypipe kms --data-dir DIR --store-url URL args…`, which must
    /// succeed: its output.
    fn kms(&self, args: &[&str]) -> Value {
        let out = self.kms_run(args);
        assert!(
            out.status.success(),
            "keypipe kms {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "keypipe kms {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `keypipe kms … args…`: what it did.
    fn kms_run(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--store-url", &self.url];
        all.extend_from_slice(args);
        admin_run("kms", self.path(), &all, None)
    }

    /// `keypipe kms list` (one JSON object per line).
    fn list(&self) -> Vec<Value> {
        let out = self.kms_run(&["list"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A new key; its keyTag.
    fn create_key(&self, name: &str) -> String {
        let key = self.kms(&["create-key", "--name", name, "--type", "AES256"]);
        assert_eq!(key["version"], 1, "{key}");
        key["keyTag"].as_str().unwrap().to_owned()
    }

    /// A new access key that may do anything.
    fn create_access_key(&self) -> Creds {
        Creds::from_cli(&self.kms(&["create-access-key", "--grant", "*:*"]))
    }

    /// A `keypipe serve` process of the site: one NCP listener.
    fn serve(&self) -> ServerProcess {
        serve_on(self.path(), Some(&self.url))
    }
}

/// `keypipe serve` on `dir` (the data directory: its KEK), with its store
/// in `url` (PostgreSQL) or, when `None`, SQLite in `dir`; one NCP
/// listener on a free port. Waits until it answers.
fn serve_on(dir: &Path, url: Option<&str>) -> ServerProcess {
    let port = free_port();
    let store = url.map_or(String::new(), |u| format!("[store]\nurl = \"{u}\"\n\n"));
    ServerProcess::start(
        dir,
        port,
        &format!(
            "{store}[[node]]\nname = \"kms\"\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\nserve = [\"ncp-kms\"]\n"
        ),
    )
}

/// Encrypts `plaintext` with `tag` on `addr`, which must answer 200: the
/// ciphertext.
fn encrypt(addr: SocketAddr, c: &Creds, tag: &str, plaintext: &[u8]) -> String {
    let r = call(
        addr,
        c,
        2,
        tag,
        "encrypt",
        &json!({"plaintext": B64.encode(plaintext)}),
    );
    assert_eq!(
        r.status,
        200,
        "encrypt on {addr}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["data"]["ciphertext"].as_str().unwrap().to_owned()
}

/// Decrypts `ciphertext` with `tag` on `addr`, which must answer 200: the
/// plaintext.
fn decrypt(addr: SocketAddr, c: &Creds, tag: &str, ciphertext: &str) -> Vec<u8> {
    let r = call(
        addr,
        c,
        2,
        tag,
        "decrypt",
        &json!({"ciphertext": ciphertext}),
    );
    assert_eq!(
        r.status,
        200,
        "decrypt on {addr}: {}",
        String::from_utf8_lossy(&r.body)
    );
    B64.decode(r.json()["data"]["plaintext"].as_str().unwrap())
        .unwrap()
}

/// The status and NCP error code of an answer.
fn outcome(r: &Answer) -> (u16, Option<String>) {
    let code = serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    (r.status, code)
}

/// Asserts the server never panicked.
fn assert_no_panic(server: &ServerProcess) {
    let log = server.log_text();
    assert!(
        !log.contains("panicked"),
        "{} panicked:\n{}",
        server.addr,
        log.lines()
            .filter(|l| l.contains("panicked") || l.contains("ERROR"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Polls `check` on each process until it holds (each at most 5 s): how
/// long after now each one took.
fn until_each(servers: [&ServerProcess; 2], check: impl Fn(SocketAddr) -> bool) -> [Duration; 2] {
    let start = Instant::now();
    let mut took: [Option<Duration>; 2] = [None, None];
    while took.iter().any(Option::is_none) {
        for (i, server) in servers.iter().enumerate() {
            if took[i].is_none() && check(server.addr) {
                took[i] = Some(start.elapsed());
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "after 5 s: {took:?} (None: still the old state)"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    took.map(Option::unwrap)
}

#[test]
fn a_key_made_with_the_cli_works_on_both_processes_and_ciphertexts_cross() {
    let site = Site::new("cross");
    let tag = site.create_key("orders");
    let c = site.create_access_key();
    let (a, b) = (site.serve(), site.serve());

    for (from, to) in [(&a, &b), (&b, &a)] {
        let plaintext = format!("made on {}, read on {}", from.addr, to.addr);
        let ct = encrypt(from.addr, &c, &tag, plaintext.as_bytes());
        assert!(ct.starts_with("ncpkms:v1:"), "{ct}");
        assert_eq!(decrypt(to.addr, &c, &tag, &ct), plaintext.as_bytes());
    }

    // A key and an access key made while both run serve on both at once.
    let later = site.create_key("later");
    let c2 = site.create_access_key();
    let ct = encrypt(b.addr, &c2, &later, b"made after the start");
    assert_eq!(decrypt(a.addr, &c2, &later, &ct), b"made after the start");

    // The store is PostgreSQL's: nothing was written to SQLite.
    assert!(
        !site.path().join("keypipe.db").exists(),
        "an SQLite store appeared in the data directory"
    );
    assert_no_panic(&a);
    assert_no_panic(&b);
}

#[test]
fn rotation_and_disable_on_one_are_honoured_by_the_other_within_a_second() {
    let site = Site::new("rotation");
    let tag = site.create_key("rotating");
    let c = site.create_access_key();
    let (a, b) = (site.serve(), site.serve());
    let bound = Duration::from_millis(1500);

    // Both hold version 1 in their caches.
    let old = encrypt(a.addr, &c, &tag, b"under version 1");
    for s in [&a, &b] {
        assert!(encrypt(s.addr, &c, &tag, b"x").starts_with("ncpkms:v1:"));
        assert_eq!(decrypt(s.addr, &c, &tag, &old), b"under version 1");
    }

    // Rotation: both encrypt under version 2; version 1 still decrypts.
    assert_eq!(site.kms(&["rotate", &tag])["version"], 2);
    let took = until_each([&a, &b], |addr| {
        encrypt(addr, &c, &tag, b"after rotation").starts_with("ncpkms:v2:")
    });
    assert!(
        took.iter().all(|t| *t < bound),
        "rotation seen after {took:?}"
    );
    eprintln!("rotation seen by A, B after {took:?}");
    for s in [&a, &b] {
        assert!(encrypt(s.addr, &c, &tag, b"y").starts_with("ncpkms:v2:"));
        assert_eq!(decrypt(s.addr, &c, &tag, &old), b"under version 1");
    }

    // Version 1 disabled: both refuse to decrypt under it.
    site.kms(&["disable", &tag, "--version", "1"]);
    let took = until_each([&a, &b], |addr| {
        let r = call(addr, &c, 2, &tag, "decrypt", &json!({"ciphertext": old}));
        match outcome(&r) {
            (422, Some(code)) if code == "INVALID_STATUS" => true,
            (200, _) => false,
            other => panic!("decrypt with version 1 being disabled: {other:?}"),
        }
    });
    assert!(
        took.iter().all(|t| *t < bound),
        "version disabling seen after {took:?}"
    );
    eprintln!("version disabling seen by A, B after {took:?}");

    // The whole key disabled: both refuse to encrypt.
    site.kms(&["disable", &tag]);
    let took = until_each([&a, &b], |addr| {
        let r = call(
            addr,
            &c,
            2,
            &tag,
            "encrypt",
            &json!({"plaintext": B64.encode(b"z")}),
        );
        match outcome(&r) {
            (422, Some(code)) if code == "INVALID_STATUS" => true,
            (200, _) => false,
            other => panic!("encrypt with the key being disabled: {other:?}"),
        }
    });
    assert!(
        took.iter().all(|t| *t < bound),
        "key disabling seen after {took:?}"
    );
    eprintln!("key disabling seen by A, B after {took:?}");
    for s in [&a, &b] {
        let r = call(
            s.addr,
            &c,
            2,
            &tag,
            "encrypt",
            &json!({"plaintext": B64.encode(b"z")}),
        );
        assert_eq!(outcome(&r).0, 422, "stays disabled on {}", s.addr);
    }
    assert_no_panic(&a);
    assert_no_panic(&b);
}

/// A small deterministic generator (xorshift), for picking keys.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A ciphertext acknowledged (200) by a server.
struct Acked {
    tag: String,
    plaintext: Vec<u8>,
    ciphertext: String,
    by: SocketAddr,
}

#[test]
fn kill_9_of_one_process_loses_nothing_acknowledged() {
    let site = Site::new("kill");
    let first = site.create_key("first");
    let c = site.create_access_key();
    let (mut a, b) = (site.serve(), site.serve());
    let (addr_a, addr_b) = (a.addr, b.addr);

    let tags = Arc::new(Mutex::new(vec![first.clone()]));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Failures on B (any time), and on A before it was killed.
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let a_after_kill = Arc::new(AtomicU64::new(0));

    let mut encryptors = Vec::new();
    for (i, addr) in [addr_a, addr_a, addr_b, addr_b].into_iter().enumerate() {
        let (tags, acked, killed, stop, failures, a_after_kill, c) = (
            Arc::clone(&tags),
            Arc::clone(&acked),
            Arc::clone(&killed),
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&a_after_kill),
            c.clone(),
        );
        encryptors.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let tag = {
                    let tags = tags.lock().unwrap();
                    tags[rng.below(tags.len())].clone()
                };
                n += 1;
                let plaintext = format!("thread {i} message {n}").into_bytes();
                let r = try_call(
                    addr,
                    &c,
                    2,
                    &tag,
                    "encrypt",
                    &json!({"plaintext": B64.encode(&plaintext)}),
                );
                match r {
                    Ok(r) if r.status == 200 => {
                        let ciphertext =
                            r.json()["data"]["ciphertext"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().push(Acked {
                            tag,
                            plaintext,
                            ciphertext,
                            by: addr,
                        });
                    }
                    _ if addr == addr_a && killed.load(Ordering::SeqCst) => {
                        // A is gone (or going): what it did not
                        // acknowledge may be lost.
                        a_after_kill.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(r) => failures.lock().unwrap().push(format!(
                        "{addr}: {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{addr}: no answer: {e}")),
                }
            }
        }));
    }

    // The CLI: create a key, rotate one, and so on. What it reported:
    // keyTag -> versions.
    let cli = {
        let (site_dir, url) = (site.path().to_owned(), site.url.clone());
        let (tags, stop) = (Arc::clone(&tags), Arc::clone(&stop));
        std::thread::spawn(move || {
            let run = |args: &[&str]| -> Result<Value, String> {
                let mut all = vec!["--store-url", &url];
                all.extend_from_slice(args);
                let out = admin_run("kms", &site_dir, &all, None);
                if out.status.success() {
                    Ok(serde_json::from_slice(&out.stdout).unwrap())
                } else {
                    Err(format!(
                        "keypipe kms {args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            };
            let mut reported: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut errors = Vec::new();
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match run(&["create-key", "--name", &format!("k{n}"), "--type", "AES256"]) {
                    Ok(v) => {
                        let tag = v["keyTag"].as_str().unwrap().to_owned();
                        reported.insert(tag.clone(), vec![v["version"].as_u64().unwrap()]);
                        tags.lock().unwrap().push(tag);
                    }
                    Err(e) => errors.push(e),
                }
                if reported.is_empty() {
                    continue;
                }
                let tag = reported
                    .keys()
                    .nth(rng.below(reported.len()))
                    .unwrap()
                    .clone();
                match run(&["rotate", &tag]) {
                    Ok(v) => reported
                        .get_mut(&tag)
                        .unwrap()
                        .push(v["version"].as_u64().unwrap()),
                    Err(e) => errors.push(e),
                }
            }
            (reported, errors)
        })
    };

    std::thread::sleep(Duration::from_millis(1200));
    let before_kill = acked.lock().unwrap().len();
    killed.store(true, Ordering::SeqCst);
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::SeqCst);
    for t in encryptors {
        t.join().unwrap();
    }
    let (reported, cli_errors) = cli.join().unwrap();

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests (B any time, A before the kill), e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(cli_errors.is_empty(), "CLI failures: {cli_errors:?}");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let by_a = acked.iter().filter(|x| x.by == addr_a).count();
    let by_b_after = acked.len() - before_kill;
    assert!(
        by_a > 0 && before_kill > 0 && by_b_after > 0,
        "a real load: {by_a} by A, {before_kill} before the kill, {by_b_after} after"
    );
    assert!(reported.len() >= 2, "the CLI made keys: {reported:?}");

    // Every acknowledged ciphertext decrypts on B, to its plaintext.
    let wrong: Mutex<Vec<String>> = Mutex::default();
    std::thread::scope(|s| {
        for part in acked.chunks(acked.len().div_ceil(4)) {
            let (c, wrong) = (&c, &wrong);
            s.spawn(move || {
                for x in part {
                    let r = try_call(
                        addr_b,
                        c,
                        2,
                        &x.tag,
                        "decrypt",
                        &json!({"ciphertext": x.ciphertext}),
                    );
                    let got = r.as_ref().ok().filter(|r| r.status == 200).map(|r| {
                        B64.decode(r.json()["data"]["plaintext"].as_str().unwrap())
                            .unwrap()
                    });
                    if got.as_deref() != Some(&x.plaintext[..]) {
                        wrong.lock().unwrap().push(format!(
                            "{} (acknowledged by {}): {:?}",
                            x.ciphertext,
                            x.by,
                            r.map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
                        ));
                    }
                }
            });
        }
    });
    let wrong = wrong.into_inner().unwrap();
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged ciphertexts do not decrypt on B, e.g. {:?}",
        wrong.len(),
        acked.len(),
        &wrong[..wrong.len().min(5)]
    );

    // Every key the CLI created exists, with exactly the versions it
    // reported (1, 2, … : nothing else rotates).
    let listed: BTreeMap<String, Vec<u64>> = site
        .list()
        .into_iter()
        .map(|k| {
            let versions = k["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["version"].as_u64().unwrap())
                .collect();
            (k["keyTag"].as_str().unwrap().to_owned(), versions)
        })
        .collect();
    for (tag, versions) in &reported {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, &expected, "the CLI's reports for {tag}");
        assert_eq!(listed.get(tag), Some(&expected), "key {tag} in the store");
    }
    assert_no_panic(&b);
    eprintln!(
        "kill -9: {} ciphertexts ({by_a} by A, {before_kill} before the kill), {} keys made, \
         {} requests to A failed after its kill",
        acked.len(),
        reported.len(),
        a_after_kill.load(Ordering::Relaxed)
    );
}

/// A PostgreSQL cluster of its own (`scripts/pg.sh start DIR`), stopped
/// when dropped (a failed test included).
struct Cluster {
    _root: tempfile::TempDir,
    dir: PathBuf,
    url: String,
}

fn pg_sh(command: &str, dir: &Path) -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh"))
        .arg(command)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/pg.sh {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Cluster {
    fn start() -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        // The server may run as the `postgres` user (when root runs the
        // tests): it must reach its directory.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = root.path().join("pg");
        let url = pg_sh("start", &dir);
        Cluster {
            _root: root,
            dir,
            url,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// What one encryption attempt of the outage test got.
struct Attempt {
    sent: Instant,
    answered: Instant,
    /// 200, or 503 (with `Retry-After`: anything else fails at once).
    status: u16,
}

#[test]
fn postgres_restart_gives_503_with_retry_after_then_recovers() {
    let cluster = Cluster::start();
    let site = Site::on(cluster.url.clone());
    let c = site.create_access_key();
    // Fresh keys: a key not in a process's cache makes it read the store.
    let keys: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let site = &site;
                s.spawn(move || {
                    (0..15)
                        .map(|i| site.create_key(&format!("fresh{w}x{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let (a, b) = (site.serve(), site.serve());
    let before = encrypt(a.addr, &c, &keys[0], b"before the restarts");

    // The client: encrypt with a key never used (the next one after each
    // success), and decrypt what was encrypted; every answer is 200 with
    // the right plaintext, or 503 with Retry-After.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let client = {
        let (stop, attempts, c, addr) =
            (Arc::clone(&stop), Arc::clone(&attempts), c.clone(), a.addr);
        let keys = keys[1..].to_vec();
        std::thread::spawn(move || {
            let check = |what: &str, r: std::io::Result<Answer>| -> Answer {
                let r = r.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
                match r.status {
                    200 => {}
                    503 => assert!(
                        r.header("retry-after").is_some(),
                        "{what}: 503 without Retry-After"
                    ),
                    other => panic!("{what}: {other} {}", String::from_utf8_lossy(&r.body)),
                }
                r
            };
            let mut next = 0;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let tag = keys
                    .get(next)
                    .expect("ran out of fresh keys (the test's budget)");
                n += 1;
                let plaintext = format!("outage message {n}");
                let sent = Instant::now();
                let r = check(
                    "encrypt",
                    try_call(
                        addr,
                        &c,
                        2,
                        tag,
                        "encrypt",
                        &json!({"plaintext": B64.encode(&plaintext)}),
                    ),
                );
                let answered = Instant::now();
                if r.status == 200 {
                    next += 1;
                    let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_owned();
                    let d = check(
                        "decrypt",
                        try_call(addr, &c, 2, tag, "decrypt", &json!({"ciphertext": ct})),
                    );
                    if d.status == 200 {
                        assert_eq!(
                            d.json()["data"]["plaintext"].as_str(),
                            Some(&*B64.encode(&plaintext)),
                            "a wrong plaintext"
                        );
                    }
                }
                attempts.lock().unwrap().push(Attempt {
                    sent,
                    answered,
                    status: r.status,
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let successes_since = |t: Instant| {
        attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.sent >= t && x.status == 200)
            .count()
    };
    let wait_recovered = |since: Instant, what: &str| {
        while successes_since(since) < 3 {
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "not recovered 5 s after {what}"
            );
            assert!(!client.is_finished(), "the client failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        since.elapsed()
    };
    wait_recovered(Instant::now(), "the start");

    // A fast restart (clients disconnected).
    pg_sh("restart", &cluster.dir);
    let restarted = Instant::now();
    let recovery_restart = wait_recovered(restarted, "the restart");

    // A longer outage: stopped for 3 s (longer than the 2 s a request
    // waits for a connection, so some answer must come within it).
    pg_sh("stop", &cluster.dir);
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let starting = Instant::now();
    pg_sh("start", &cluster.dir);
    let started = Instant::now();
    let recovery_outage = wait_recovered(started, "the outage");

    stop.store(true, Ordering::SeqCst);
    client.join().expect("the client saw a bad answer");
    let attempts = attempts.lock().unwrap();
    // Answered while PostgreSQL was down: an unknown key cannot be
    // served, so 503 (with Retry-After, checked by the client) unless the
    // request came before the stop (it may have read the store in time).
    // A request waits up to 2 s for a connection: some answer lands in
    // the 3 s.
    let down: Vec<&Attempt> = attempts
        .iter()
        .filter(|x| x.answered >= stopped && x.answered <= starting)
        .collect();
    let timeline: Vec<String> = attempts
        .iter()
        .filter(|x| x.answered + Duration::from_secs(3) >= stopped)
        .map(|x| {
            let at = |t: Instant| {
                let ms = |d: Duration| d.as_millis() as i64;
                if t >= stopped {
                    ms(t - stopped)
                } else {
                    -ms(stopped - t)
                }
            };
            format!("{}..{}ms: {}", at(x.sent), at(x.answered), x.status)
        })
        .collect();
    assert!(
        !down.is_empty(),
        "no answer came during the outage (0..{}ms); attempts around it: {timeline:?}",
        (starting - stopped).as_millis()
    );
    assert!(
        down.iter().all(|x| x.status == 503 || x.sent < stopped),
        "an unknown key served while PostgreSQL was down: {timeline:?}"
    );
    let unavailable = attempts.iter().filter(|x| x.status == 503).count();

    // Both serve what was made before, without a restart of their own.
    assert_eq!(
        decrypt(b.addr, &c, &keys[0], &before),
        b"before the restarts"
    );
    let after = encrypt(b.addr, &c, &keys[0], b"after");
    assert_eq!(decrypt(a.addr, &c, &keys[0], &after), b"after");
    assert_no_panic(&a);
    assert_no_panic(&b);
    eprintln!(
        "outage: {} attempts, {unavailable} answered 503, {} during the stop; recovered \
         {recovery_restart:?} after the restart, {recovery_outage:?} after the start ({:?} \
         to start)",
        attempts.len(),
        down.len(),
        started - starting
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `pg_dump` of the newest installed PostgreSQL (the server's own), else
/// the one on PATH.
fn pg_dump() -> PathBuf {
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/pg_dump"))
        .filter(|p| p.exists())
        .collect();
    versioned.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
    });
    versioned.pop().unwrap_or_else(|| {
        require("pg_dump");
        PathBuf::from("pg_dump")
    })
}

#[test]
fn no_secret_in_clear_in_the_database() {
    let site = Site::new("nosecret");
    let tag = site.create_key("secretive");
    let c = site.create_access_key();
    let rotated = site.kms(&["rotate", &tag]);
    assert_eq!(rotated["version"], 2);
    let server = site.serve();
    let plaintext = b"distinctive plaintext 5f0c2a9e-canary";
    let ct = encrypt(server.addr, &c, &tag, plaintext);
    assert_eq!(decrypt(server.addr, &c, &tag, &ct), plaintext);

    // The material, as the store hands it out (unwrapped with the KEK).
    let mut options = StoreOptions::new(site.path());
    options.url = Some(site.url.clone());
    let store = Store::open(&options).unwrap();
    let key = store.key(&tag).unwrap().expect("the key is in the store");
    let materials: Vec<Vec<u8>> = key.versions.iter().map(|v| v.material.to_vec()).collect();
    assert_eq!(materials.len(), 2);
    drop(store);
    let kek = std::fs::read(site.path().join("kek.key")).unwrap();
    assert_eq!(kek.len(), 32);

    let out = Command::new(pg_dump())
        .args(["--no-owner", "-d", &site.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = out.stdout;
    let has = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    // The scan sees the data.
    assert!(has(c.access.as_bytes()), "the dump lacks the access key id");
    assert!(has(tag.as_bytes()), "the dump lacks the keyTag");

    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("access secret".into(), c.secret.as_bytes().to_vec()),
        (
            "access secret, hex".into(),
            hex(c.secret.as_bytes()).into_bytes(),
        ),
        ("plaintext".into(), plaintext.to_vec()),
        (
            "plaintext, base64".into(),
            B64.encode(plaintext).into_bytes(),
        ),
        ("KEK".into(), kek.clone()),
        ("KEK, hex".into(), hex(&kek).into_bytes()),
        ("KEK, HEX".into(), hex(&kek).to_uppercase().into_bytes()),
        ("KEK, base64".into(), B64.encode(&kek).into_bytes()),
    ];
    for (i, m) in materials.iter().enumerate() {
        secrets.push((format!("material v{}", i + 1), m.clone()));
        secrets.push((format!("material v{}, hex", i + 1), hex(m).into_bytes()));
        secrets.push((
            format!("material v{}, base64", i + 1),
            B64.encode(m).into_bytes(),
        ));
    }
    for (what, secret) in &secrets {
        assert!(!has(secret), "{what} in clear in pg_dump's output");
    }
    assert_no_panic(&server);
}

#[test]
fn migrate_to_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_kms = |args: &[&str]| admin("kms", dir.path(), args);
    let key = sqlite_kms(&["create-key", "--name", "moving", "--type", "AES256"]);
    let tag = key["keyTag"].as_str().unwrap().to_owned();
    let c = Creds::from_cli(&sqlite_kms(&["create-access-key", "--grant", "*:*"]));

    // Ciphertexts made on SQLite, under two versions.
    let (v1, v2) = {
        let server = serve_on(dir.path(), None);
        let v1 = encrypt(server.addr, &c, &tag, b"sealed on sqlite, v1");
        assert_eq!(sqlite_kms(&["rotate", &tag])["version"], 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        let v2 = loop {
            let ct = encrypt(server.addr, &c, &tag, b"sealed on sqlite, v2");
            if ct.starts_with("ncpkms:v2:") {
                break ct;
            }
            assert!(Instant::now() < deadline, "the rotation never applied");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_no_panic(&server);
        (v1, v2)
    };
    assert!(dir.path().join("keypipe.db").exists());

    let url = fresh_pg_database("migrate");
    let out = admin_run("store", dir.path(), &["migrate-to", &url], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("copied "),
        "migrate-to: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("migrate-to: {text}");

    // Again into the same database: refused, by reason.
    let again = admin_run("store", dir.path(), &["migrate-to", &url], None);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("empty"),
        "a second migrate-to: {:?} {err}",
        again.status
    );

    // The SQLite files out of the way: the server can only read PostgreSQL.
    let aside = dir.path().join("sqlite-aside");
    std::fs::create_dir(&aside).unwrap();
    for name in ["keypipe.db", "keypipe.db-wal", "keypipe.db-shm"] {
        let from = dir.path().join(name);
        if from.exists() {
            std::fs::rename(&from, aside.join(name)).unwrap();
        }
    }
    let server = serve_on(dir.path(), Some(&url));
    assert_eq!(decrypt(server.addr, &c, &tag, &v1), b"sealed on sqlite, v1");
    assert_eq!(decrypt(server.addr, &c, &tag, &v2), b"sealed on sqlite, v2");
    assert!(encrypt(server.addr, &c, &tag, b"on postgres").starts_with("ncpkms:v2:"));
    assert!(
        !dir.path().join("keypipe.db").exists(),
        "the server made an SQLite store"
    );
    // The CLI sees the migrated key on PostgreSQL too.
    let listed = admin("kms", dir.path(), &["--store-url", &url, "list"]);
    assert_eq!(listed["keyTag"], tag.as_str());
    assert_eq!(listed["versions"].as_array().unwrap().len(), 2);
    assert_no_panic(&server);
}
