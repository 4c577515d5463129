//! The Python bindings (`bindings/python`) install into a fresh virtual
//! environment straight from the repository (`pip install
//! ./bindings/python`, no compiler involved) and their pytest suite passes
//! against the freshly built `libkeypipe.so`: a pair with 10 000 chunks
//! compared on both nodes, the KMS side fed by pushes, every error, a
//! restart that resumes a stream; then the package's example runs.

mod common;

use std::process::Command;

use common::{lib_dir, repo, require, run};

#[test]
fn python_package_installs_in_a_fresh_venv_and_its_tests_pass() {
    require("python3");
    let venv = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    let pip = venv.join("bin/pip");
    run(Command::new(&pip).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "pytest",
    ]));
    run(Command::new(&pip)
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(repo().join("bindings/python")));

    let lib = lib_dir().join("libkeypipe.so");
    // Run from outside the source tree: the package imported is the one
    // pip installed, not bindings/python/keypipe.
    let outside = tempfile::tempdir().unwrap();
    let python = venv.join("bin/python");
    let installed = run(Command::new(&python)
        .args(["-c", "import keypipe; print(keypipe.__file__)"])
        .env("KEYPIPE_LIB", &lib)
        .current_dir(outside.path()));
    assert!(
        installed.trim().starts_with(venv.to_str().unwrap()),
        "keypipe imported from {installed}, not from the virtual environment"
    );
    let text = run(Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(repo().join("bindings/python/tests"))
        .env("KEYPIPE_LIB", &lib)
        .env("KP_TMP", outside.path())
        .current_dir(outside.path()));
    assert!(text.contains(" passed"), "{text}");
    assert!(
        !text.contains("failed") && !text.contains("error"),
        "{text}"
    );
    println!("{text}");

    let example = run(Command::new(&python)
        .arg(repo().join("bindings/python/example.py"))
        .env("KEYPIPE_LIB", &lib)
        .current_dir(outside.path()));
    assert!(
        example.contains("python example: 100 chunks pushed to both KMS sides, identical"),
        "{example}"
    );
    println!("{example}");
}
