//! The house rules of the source tree, checked: every Rust source file
//! opens with a `//!` comment saying what it owns, every crate's `lib.rs`
//! names each of its modules, and no source file is longer than
//! [`MAX_LINES`] lines of non-test code unless its opening comment says
//! why (a sentence starting "This file is long because").

use std::fs;
use std::path::{Path, PathBuf};

/// Lines of non-test code above which a file must say why it is long.
const MAX_LINES: usize = 600;
/// The words that start that explanation.
const LONG_BECAUSE: &str = "This file is long because";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `src` folders of the workspace: the server's and each crate's.
fn source_roots() -> Vec<PathBuf> {
    let mut roots = vec![root().join("src")];
    let mut crates: Vec<PathBuf> = fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    roots.extend(crates);
    roots
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in source_roots() {
        rust_files(&dir, &mut files);
    }
    assert!(files.len() > 100, "only {} source files found", files.len());
    files
}

/// The text of the opening `//!` comment.
fn module_doc(text: &str) -> String {
    text.lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `path` holds only tests (a `tests.rs`, a file under a `tests/`
/// folder, or one whose name says it is test support).
fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || name == "testing.rs"
        || name == "test_strategies.rs"
        || path
            .strip_prefix(root())
            .unwrap_or(path)
            .components()
            .any(|c| c.as_os_str() == "tests")
}

/// Lines before the file's `#[cfg(test)]` unit-test module, if any.
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod tests {"))
        .unwrap_or(lines.len())
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn every_source_file_opens_with_what_it_owns() {
    let missing: Vec<String> = all_sources()
        .iter()
        .filter(|p| module_doc(&fs::read_to_string(p).unwrap()).len() < 20)
        .map(|p| relative(p))
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` comment saying what they own:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_file_is_long_without_saying_why() {
    let long: Vec<String> = all_sources()
        .iter()
        .filter(|p| !is_test_file(p))
        .filter_map(|p| {
            let text = fs::read_to_string(p).unwrap();
            let n = code_lines(&text);
            (n > MAX_LINES && !module_doc(&text).contains(LONG_BECAUSE))
                .then(|| format!("{} ({n} lines)", relative(p)))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines of code without \"{LONG_BECAUSE} ...\" in the opening comment \
         (split the file by concept, or say why it is one):\n{}",
        long.join("\n")
    );
}

#[test]
fn each_lib_rs_names_every_module_of_its_crate() {
    let mut unnamed = Vec::new();
    for dir in source_roots() {
        let lib = dir.join("lib.rs");
        let text = fs::read_to_string(&lib).unwrap();
        let doc = module_doc(&text);
        for line in text.lines() {
            let line = line.trim();
            let Some(decl) = ["pub mod ", "pub(crate) mod ", "mod "]
                .iter()
                .find_map(|p| line.strip_prefix(p))
            else {
                continue;
            };
            let Some(name) = decl.strip_suffix(';') else {
                continue;
            };
            if name == "tests" {
                continue;
            }
            if !doc.contains(&format!("`{name}`")) && !doc.contains(&format!("[`{name}`]")) {
                unnamed.push(format!("{}: `{name}`", relative(&lib)));
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "modules a lib.rs does not name (in backticks) in its opening comment:\n{}",
        unnamed.join("\n")
    );
}

#[test]
fn the_rules_see_what_they_check() {
    let text = "//! Owns the ring.\n\nfn a() {}\n#[cfg(test)]\nmod tests {\n}\n";
    assert_eq!(module_doc(text), "Owns the ring.");
    assert_eq!(code_lines(text), 3);
    assert_eq!(module_doc("fn a() {}\n//! late\n"), "");
    assert!(is_test_file(Path::new(
        "crates/x/src/qkd/node/tests/directed.rs"
    )));
    assert!(!is_test_file(Path::new("crates/x/src/qkd/node/mod.rs")));
}
