//! Replays the fuzz corpora that are checked in through the fuzz entry
//! functions (`keypipe_*::fuzzing`, the same functions the cargo-fuzz
//! targets under `fuzz/` call): every file of `fuzz/seeds/<target>/` and
//! of `fuzz/regressions/<target>/`. A crash the fuzzer found becomes a
//! test by copying its input into `fuzz/regressions/<target>/`.
//!
//! Every target must have seeds (so these tests never pass by running
//! nothing), and every target under `fuzz/fuzz_targets/` must be listed
//! here.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

/// Every fuzz target (its entry function's crate and name), as the list
/// `TARGETS` and one `#[test]` each.
macro_rules! targets {
    ($($krate:ident :: $name:ident),* $(,)?) => {
        /// Every fuzz target: its name and entry function.
        const TARGETS: &[(&str, fn(&[u8]))] = &[$((stringify!($name), $krate::fuzzing::$name)),*];

        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
    };
}

targets!(
    keypipe_core::link_session,
    keypipe_net::http_request,
    keypipe_net::http_chunked,
    keypipe_net::http_differential,
    keypipe_net::origin_parse,
    keypipe_net::client_answer,
    keypipe_net::etsi004_kms_push,
    keypipe_net::tls_identity,
    keypipe_kms::etsi014_request,
    keypipe_kms::ncp_request,
    keypipe_kms::ncp_ciphertext,
    keypipe_kms::agreement_public_key,
    keypipe_kms::agreement_request,
    keypipe_kms::login_request,
    keypipe_kms::keytalk_form,
    keypipe_kms::keytalk_csr,
    keypipe_kms::donau_amount,
    keypipe_kms::donau_crockford,
    keypipe_kms::gateway_verify,
    server::etsi004_qkd_request,
);

/// The server package's entry functions, under the macro's
/// `crate::fuzzing::name` shape.
mod server {
    pub mod fuzzing {
        pub use keypipe_server::api::fuzz_etsi004_request as etsi004_qkd_request;
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir` (none when it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Feeds every seed and regression of `target` to its entry function.
fn replay(target: &str) {
    let (_, entry) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a listed target");
    let seeds = files(&fuzz_dir().join("seeds").join(target));
    assert!(
        !seeds.is_empty(),
        "fuzz/seeds/{target}/ has no seed: this test would run nothing"
    );
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    // Every file runs, so one test run names every failing input.
    let failed: Vec<String> = seeds
        .iter()
        .chain(&regressions)
        .filter(|path| {
            let data = std::fs::read(path).expect("a readable corpus file");
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| entry(&data)));
            if run.is_err() {
                eprintln!("{target}: {} failed (its panic is above)", path.display());
            }
            run.is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} failed on {failed:#?}");
}

#[test]
fn every_fuzz_target_is_replayed() {
    let mut on_disk: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fuzz/fuzz_targets/ and TARGETS differ");
}
