//! `include/keypipe.h` must equal a fresh cbindgen run over the crate.
//! Regenerate with `KEYPIPE_BLESS=1 cargo test --test header`.

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
    let path = root.join("include/keypipe.h");
    if std::env::var_os("KEYPIPE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "include/keypipe.h is stale: run `KEYPIPE_BLESS=1 cargo test --test header` and commit it"
    );
    for name in [
        "kp_engine_new",
        "kp_engine_pair_new",
        "kp_engine_free",
        "kp_open_connect",
        "kp_get_key",
        "kp_close",
        "kp_result_message",
    ] {
        assert!(fresh.contains(name), "{name} missing from the header");
    }
}
