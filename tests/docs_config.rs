//! The operator's configuration reference (`docs/operations.md`,
//! section "Configuration reference") documents every key of the embedded
//! default (`src/default.toml`), including the optional keys the default
//! shows commented out, and names no key that does not exist.
//!
//! A key is documented when a table row of the reference starts with it in
//! backticks: as its full dotted path (`node.http.max_connections`), or as
//! the rest of it under a `###` heading naming its section in backticks
//! (`` `[node.http]` `` and a row `` `max_connections` ``; `[[node]]` for
//! arrays of tables; a heading without a section is the top level). A
//! mention in prose does not count.

use std::collections::BTreeSet;
use std::path::Path;

/// Keys the code accepts that `src/default.toml` shows neither live nor
/// commented out, documented on purpose.
const DOCUMENTED_BEYOND_THE_DEFAULT: [&str; 5] = [
    "donau.donation_units.years",
    "node.engine.device.path",
    "node.engine.device.format",
    "node.keytalk.tls",
    "node.etsi014.tls",
];

/// The heading of the reference section.
const REFERENCE: &str = "## Configuration reference";

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with every commented-out key or table header uncommented: a
/// line whose comment is itself a TOML key/value line or header
/// (`# url = "postgres://…"`, `# [node.tls]`). Prose comments stay.
fn uncomment(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let rest = line.trim_start().strip_prefix('#').map(str::trim_start);
        let is_toml = |rest: &str| {
            let key = rest.split_once('=').is_some_and(|(k, _)| {
                !k.trim().is_empty()
                    && k.trim()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            (rest.starts_with('[') || key) && toml::from_str::<toml::Table>(rest).is_ok()
        };
        match rest {
            Some(rest) if is_toml(rest) => out.push_str(rest),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The keys of a parsed file.
#[derive(Default)]
struct Keys {
    /// Values: dotted paths to everything that is not a table or an array
    /// of tables (`node.serve`, `donau.donation_units.value`).
    leaves: BTreeSet<String>,
    /// Tables and arrays of tables (`node`, `node.http`,
    /// `donau.donation_units`).
    containers: BTreeSet<String>,
}

impl Keys {
    fn of(table: &toml::Table) -> Keys {
        let mut keys = Keys::default();
        keys.table("", table);
        keys
    }

    fn table(&mut self, prefix: &str, table: &toml::Table) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            self.value(path, value);
        }
    }

    fn value(&mut self, path: String, value: &toml::Value) {
        match value {
            toml::Value::Table(t) => {
                self.table(&path, t);
                self.containers.insert(path);
            }
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
            {
                for item in items {
                    self.table(&path, item.as_table().expect("checked"));
                }
                self.containers.insert(path);
            }
            _ => {
                self.leaves.insert(path);
            }
        }
    }

    fn knows(&self, path: &str) -> bool {
        self.leaves.contains(path)
            || self.containers.contains(path)
            || DOCUMENTED_BEYOND_THE_DEFAULT.contains(&path)
    }
}

/// The text between the first pair of backticks in `s`.
fn first_backticked(s: &str) -> Option<&str> {
    let (_, rest) = s.split_once('`')?;
    Some(rest.split_once('`')?.0)
}

/// Every text between backticks in `s`.
fn backticked(s: &str) -> impl Iterator<Item = &str> {
    s.split('`').skip(1).step_by(2)
}

/// `[section]` or `[[section]]`: the section.
fn section_name(token: &str) -> Option<&str> {
    let double = token.strip_prefix("[[").and_then(|t| t.strip_suffix("]]"));
    double.or_else(|| token.strip_prefix('[')?.strip_suffix(']'))
}

/// A table row of the reference: the section of the heading above it and
/// the first backticked text of its first cell.
struct Row {
    section: String,
    key: String,
    line: usize,
}

impl Row {
    /// The dotted paths this row may stand for.
    fn paths(&self) -> Vec<String> {
        if self.section.is_empty() {
            return vec![self.key.clone()];
        }
        // A bare key stands only for the key of its heading's section; a
        // dotted one may also be written in full.
        let mut paths = vec![format!("{}.{}", self.section, self.key)];
        if self.key.contains('.') {
            paths.push(self.key.clone());
        }
        paths
    }
}

/// The reference section of `doc`: its lines (numbered from 1), outside
/// code fences.
fn reference_lines(doc: &str) -> Vec<(usize, &str)> {
    let mut lines = doc.lines().enumerate().map(|(i, l)| (i + 1, l));
    assert!(
        lines.any(|(_, l)| l.trim_end() == REFERENCE),
        "docs/operations.md has no heading {REFERENCE:?}"
    );
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in lines {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.starts_with("## ") || line.starts_with("# ") {
            break;
        }
        out.push((n, line));
    }
    out
}

fn rows(reference: &[(usize, &str)]) -> Vec<Row> {
    let mut section = String::new();
    let mut rows = Vec::new();
    for &(n, line) in reference {
        if let Some(heading) = line.strip_prefix("### ") {
            section = backticked(heading)
                .find_map(section_name)
                .unwrap_or("")
                .to_owned();
        } else if let Some(cells) = line.trim().strip_prefix('|') {
            let first = cells.split('|').next().unwrap_or("");
            if let Some(key) = first_backticked(first) {
                rows.push(Row {
                    section: section.clone(),
                    key: key.to_owned(),
                    line: n,
                });
            }
        }
    }
    rows
}

#[test]
fn the_reference_documents_every_key_of_the_default() {
    let default = read("src/default.toml");
    let live: toml::Table = toml::from_str(&default).expect("src/default.toml parses");
    let all: toml::Table = toml::from_str(&uncomment(&default))
        .expect("src/default.toml with its commented-out keys uncommented parses");
    let (live, all) = (Keys::of(&live), Keys::of(&all));
    assert!(
        all.leaves.is_superset(&live.leaves) && all.leaves.len() > live.leaves.len(),
        "uncommenting must only add the optional keys"
    );
    let doc = read("docs/operations.md");
    let documented: BTreeSet<String> = rows(&reference_lines(&doc))
        .iter()
        .flat_map(Row::paths)
        .collect();
    let missing: Vec<String> = all
        .leaves
        .iter()
        .filter(|key| !documented.contains(*key))
        .map(|key| match live.leaves.contains(key) {
            true => key.clone(),
            false => format!("{key} (commented out in the default)"),
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md, {REFERENCE:?}: {} key(s) of src/default.toml are not documented \
         (a table row starting with the key in backticks, under a heading naming its section):\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

#[test]
fn the_reference_names_only_keys_that_exist() {
    let default = read("src/default.toml");
    let all: toml::Table = toml::from_str(&uncomment(&default)).expect("parses");
    let roots: BTreeSet<&str> = all.keys().map(String::as_str).collect();
    let all = Keys::of(&all);
    let doc = read("docs/operations.md");
    let reference = reference_lines(&doc);
    let mut unknown = Vec::new();
    for row in rows(&reference) {
        if !row.paths().iter().any(|p| all.knows(p)) {
            unknown.push(format!(
                "line {}: row `{}` (section [{}])",
                row.line, row.key, row.section
            ));
        }
    }
    let dotted = |t: &str| {
        t.split('.').count() > 1
            && t.split('.').all(|part| {
                part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    };
    for &(n, line) in &reference {
        for token in backticked(line) {
            let path = section_name(token).unwrap_or(token);
            let is_key = section_name(token).is_some() || dotted(token);
            let root = path.split('.').next().unwrap_or("");
            if is_key && roots.contains(root) && !all.knows(path) {
                unknown.push(format!("line {n}: `{token}`"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "docs/operations.md, {REFERENCE:?} names keys that are not in src/default.toml (live or \
         commented out) nor in DOCUMENTED_BEYOND_THE_DEFAULT:\n  {}",
        unknown.join("\n  ")
    );
}

#[test]
fn commented_out_keys_are_found() {
    let text = "a = 1\n# b = 2   # why\n# prose: c = 3\n[t]\n# [u]\n# v = \"x\"\n";
    let all: toml::Table = toml::from_str(&uncomment(text)).unwrap();
    let keys = Keys::of(&all);
    let leaves: Vec<&str> = keys.leaves.iter().map(String::as_str).collect();
    assert_eq!(leaves, ["a", "b", "u.v"]);
}
