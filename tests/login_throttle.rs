//! Login throttling per source address (security review F16), over real
//! sockets against the real binary: wrong guesses from one address back
//! off that address only, so an attacker cannot lock a user out. The test
//! client plays several hosts by binding 127.0.0.2 or 127.0.0.3 before it
//! connects (Linux routes all of 127/8 to the loopback interface).

#[path = "support/ka_client.rs"]
mod ka_client;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use ka_client::{Encoding, Scheme, Session, hello, random_nonce};
use support::*;

const PASSWORD: &str = "s3cret-Pässword";
const ALICE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// A server serving key agreement and login, a failed login holding its
/// source for `delay_ms` (doubling per failure).
fn server(dir: &Path, delay_ms: u64) -> ServerProcess {
    let port = free_port();
    ServerProcess::start(
        dir,
        port,
        &format!(
            "[login]\nfailure_delay_ms = {delay_ms}\n\
             [[node]]\nname = \"ka\"\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\nserve = [\"key-agreement\"]\n"
        ),
    )
}

fn add_user(dir: &Path, name: &str, password: &str) {
    let out = admin_run(
        "user",
        dir,
        &["add", "--domain", "corp", "--name", name],
        Some(&format!("{password}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One agreement, then a login of `corp/alice` with `password`, on a new
/// connection from `source`: the answer and how long the login took.
fn login_from(addr: SocketAddr, source: IpAddr, password: &str) -> (Answer, Duration) {
    let mut conn = Conn::open_from(addr, source).unwrap();
    let hello = hello(
        Scheme::EcAes1,
        Encoding::Raw,
        b"login-throttle",
        &random_nonce(),
    );
    let answer = conn
        .send("POST", "/rest/key-agreement", Some(&hello.body))
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let session: Session = hello.finish(&answer.json()).unwrap();
    let body = session.login_body("corp", "alice", password);
    let t = Instant::now();
    let answer = conn
        .send("POST", &session.login_path(), Some(&body))
        .unwrap();
    (answer, t.elapsed())
}

/// The review's scenario: an attacker sends a wrong password for alice
/// whenever his hold ends; alice, from another address, logs in with the
/// right one at once. (With the throttle per name, she got 401 until the
/// attacker's hold ended, and he could keep it from ever ending.)
#[test]
fn wrong_guesses_from_one_address_never_lock_the_user_out_from_another() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), "alice", PASSWORD);
    let srv = server(dir.path(), 1000);
    let addr = srv.addr;
    let ms = Duration::from_millis;

    // First wrong guess: answered when the attacker's 1 s hold ends.
    let (a, took) = login_from(addr, ATTACKER, "guess-1");
    assert_eq!(a.status, 401);
    assert!(took >= ms(1000), "{took:?}");
    // The next, right as that hold ended: checked, and the attacker is
    // held 2 s more (its answer comes then).
    let guess = std::thread::spawn(move || login_from(addr, ATTACKER, "guess-2"));
    std::thread::sleep(ms(300));

    // Meanwhile alice logs in from her own address, at once.
    let (a, took) = login_from(addr, ALICE, PASSWORD);
    assert_eq!(a.status, 200, "alice locked out by another address: {a:?}");
    assert!(took < ms(1500), "{took:?}");
    assert!(
        !guess.is_finished(),
        "alice was answered before the attacker's hold ended"
    );
    let tokens = a.json();
    assert_eq!(tokens["access_token"].as_str().unwrap().len(), 43);

    // The attacker's own address is still held: not even the right
    // password is checked from there before its hold ends.
    let (a, _) = login_from(addr, ATTACKER, PASSWORD);
    assert_eq!(a.status, 401, "the held address backs off");
    let (a, took) = guess.join().unwrap();
    assert_eq!(a.status, 401);
    assert!(took >= ms(2000), "{took:?}");

    // The guard against distributed guessing: a wrong password from a
    // third, clean address is checked at once, but as alice's name has
    // two failures from elsewhere, that address is held as for a third
    // failure (4 s), not a first (1 s).
    let (a, took) = login_from(addr, OTHER, "guess-3");
    assert_eq!(a.status, 401);
    assert!(took >= ms(4000), "{took:?}");

    // Alice again, right after: still fine.
    let (a, took) = login_from(addr, ALICE, PASSWORD);
    assert_eq!(a.status, 200, "{a:?}");
    assert!(took < ms(1500), "{took:?}");
}
