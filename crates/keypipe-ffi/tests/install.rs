//! The C library is lean and installs like a C library: its dependency
//! list has no SQL, RSA, Argon2, command line or KMS service; `make
//! install` puts the shared library (with its soname), the static library,
//! the header and `keypipe.pc` under a prefix, and a C program outside the
//! repository builds against it with pkg-config alone.

mod common;

use std::path::Path;
use std::process::Command;

use common::{lib_dir, run};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_c_library_depends_on_no_server_or_kms_crate() {
    let tree = run(Command::new(env!("CARGO")).args([
        "tree",
        "--manifest-path",
        &format!("{MANIFEST}/Cargo.toml"),
        "-p",
        "keypipe-ffi",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--offline",
    ]));
    let packages: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for banned in [
        "rusqlite",
        "libsqlite3-sys",
        "rsa",
        "argon2",
        "clap",
        "keypipe-kms",
        "keypipe",
        "signal-hook",
        "tracing-subscriber",
    ] {
        assert!(!packages.contains(banned), "libkeypipe links {banned}");
    }
    for needed in ["keypipe-core", "keypipe-net", "mio", "zeroize"] {
        assert!(packages.contains(needed), "{needed} missing from:\n{tree}");
    }
    println!("libkeypipe: {} packages", packages.len());
}

fn soname(lib: &Path) -> String {
    let text = run(Command::new("readelf").arg("-d").arg(lib));
    text.lines()
        .find(|l| l.contains("(SONAME)"))
        .and_then(|l| l.split('[').nth(1))
        .map(|s| s.trim_end_matches(']').to_owned())
        .unwrap_or_default()
}

const CONSUMER: &str = r#"
#include <stdio.h>
#include <string.h>
#include <keypipe.h>

int main(void) {
    kp_engine *a = NULL, *b = NULL;
    if (kp_engine_pair_new(NULL, &a, &b) != KP_OK) return 1;
    kp_qos q;
    memset(&q, 0, sizeof q);
    q.key_chunk_size = 32;
    q.timeout = 2000;
    uint8_t ksid[16] = {0}, ka[32], kb[32];
    uint32_t st, i = 0;
    if (kp_open_connect(a, "x", "y", &q, ksid, &st) != KP_OK || st != 1) return 2;
    kp_qos qb = q;
    if (kp_open_connect(b, "x", "y", &qb, ksid, &st) != KP_OK || st != 0) return 3;
    if (kp_get_key(a, ksid, &i, ka, sizeof ka, NULL, &st) != KP_OK || st != 0) return 4;
    i = 0;
    if (kp_get_key(b, ksid, &i, kb, sizeof kb, NULL, &st) != KP_OK || st != 0) return 5;
    if (memcmp(ka, kb, sizeof ka) != 0) return 6;
    printf("consumer: keypipe %s (header %s, ABI %d): same key on both nodes\n",
           kp_version(), KP_VERSION, KP_ABI_VERSION);
    kp_engine_free(a);
    kp_engine_free(b);
    return 0;
}
"#;

#[test]
fn make_install_gives_a_pkg_config_library_a_c_program_builds_against() {
    let lib = lib_dir();
    let abi = env!("CARGO_PKG_VERSION_MINOR");
    assert_eq!(
        soname(&lib.join("libkeypipe.so")),
        format!("libkeypipe.so.{abi}")
    );
    let prefix = tempfile::tempdir().unwrap();
    run(Command::new("make").args([
        "-C",
        MANIFEST,
        "install",
        "SKIP_BUILD=1",
        &format!("LIBSRC={}", lib.display()),
        &format!("PREFIX={}", prefix.path().display()),
    ]));
    let libdir = prefix.path().join("lib");
    for f in [
        "libkeypipe.a".to_owned(),
        "libkeypipe.so".to_owned(),
        format!("libkeypipe.so.{abi}"),
        format!("libkeypipe.so.{}", env!("CARGO_PKG_VERSION")),
        "pkgconfig/keypipe.pc".to_owned(),
    ] {
        assert!(libdir.join(&f).exists(), "{f} not installed");
    }
    assert!(prefix.path().join("include/keypipe.h").exists());

    // A consumer outside the repository, knowing only the prefix.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("consumer.c"), CONSUMER).unwrap();
    let pc_path = libdir.join("pkgconfig");
    let flags = run(Command::new("pkg-config")
        .args(["--cflags", "--libs", "keypipe"])
        .env("PKG_CONFIG_PATH", &pc_path));
    let exe = outside.path().join("consumer");
    let script = format!(
        "cc -std=c11 -Wall -Wextra -Werror consumer.c -o {} {} -Wl,-rpath,{}",
        exe.display(),
        flags.trim(),
        libdir.display()
    );
    run(Command::new("sh")
        .args(["-c", &script])
        .current_dir(outside.path()));
    let needed = run(Command::new("readelf").arg("-d").arg(&exe));
    assert!(
        needed.contains(&format!("[libkeypipe.so.{abi}]")),
        "the program must need the soname:\n{needed}"
    );
    let text = run(&mut Command::new(&exe));
    assert!(text.contains("same key on both nodes"), "{text}");
    assert!(text.contains(&format!("ABI {abi}")), "{text}");
    println!("{text}");
}
