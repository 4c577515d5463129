//! `include/keypipe.h` must equal a fresh cbindgen run over the crate.
//! Regenerate with `KEYPIPE_BLESS=1 cargo test -p keypipe-ffi --test header`.

use std::path::Path;

#[test]
fn header_matches_fresh_cbindgen_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).unwrap();
    let path = root.join("../../include/keypipe.h");
    if std::env::var_os("KEYPIPE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "include/keypipe.h is stale: run `KEYPIPE_BLESS=1 cargo test -p keypipe-ffi --test header` and commit it"
    );
    for name in [
        "kp_engine_new",
        "kp_engine_pair_new",
        "kp_engine_free",
        "kp_open_connect",
        "kp_get_key",
        "kp_close",
        "kp_result_message",
        "kp_engine_shutdown",
        "kp_push_open",
        "kp_push_start",
        "kp_kms_new",
        "kp_kms_get_key",
        "kp_kms_wait_key",
        "kp_stream_qos",
        "kp_kms_next_key",
        "kp_kms_free",
    ] {
        assert!(fresh.contains(name), "{name} missing from the header");
    }
}

#[test]
fn header_leaks_nothing_but_the_c_abi() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include/keypipe.h"),
    )
    .unwrap();
    // Every exported name is the ABI's own: kp_ / KP_ prefixed.
    for line in text.lines() {
        let l = line.trim_start();
        if let Some(rest) = l.strip_prefix("#define ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            assert!(name.starts_with("KP") || name == "KEYPIPE_H", "{line}");
        }
        if l.starts_with("typedef") {
            assert!(l.contains(" kp_"), "{line}");
        }
    }
}

#[test]
fn abi_version_follows_the_crate_version() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include/keypipe.h"),
    )
    .unwrap();
    // Before 1.0 the minor version is the ABI version (build.rs sets the
    // soname from it).
    let minor = env!("CARGO_PKG_VERSION_MINOR");
    assert!(
        text.contains(&format!("#define KP_ABI_VERSION {minor}")),
        "KP_ABI_VERSION must be {minor}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("#define KP_VERSION \"{version}\"")),
        "KP_VERSION must be {version}"
    );
}
