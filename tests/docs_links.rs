//! Every relative link in the README, the top-level project pages and
//! `docs/` resolves inside the repository: the file exists and, with a
//! `#anchor`, the target page has a heading of that GitHub slug. Web
//! (`http(s)`) links are not followed (there is no network), and no page
//! names `../shared`, the project's inputs outside the repository that a
//! clone lacks.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown pages whose links are checked.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md"]
        .iter()
        .map(|p| root.join(p))
        .collect();
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The targets of inline links `[text](target)` and of reference
/// definitions `[name]: target`, outside code blocks and code spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if trimmed.starts_with('[')
            && let Some(end) = trimmed.find("]: ")
        {
            out.push(
                trimmed[end + 3..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            );
            continue;
        }
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(close) = closing_paren(after) else {
                break;
            };
            let target = after[..close].split_whitespace().next().unwrap_or("");
            out.push(target.trim_matches(['<', '>']).to_owned());
            rest = &after[close..];
        }
    }
    out
}

/// `line` with the text of its code spans blanked.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(c);
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// The index of the `)` closing a link target, allowing balanced
/// parentheses inside it.
fn closing_paren(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// GitHub's anchor of a heading: lower case, punctuation dropped except
/// `-` and `_`, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of `page`'s headings (GitHub numbers repeats `-1`, `-2`).
fn anchors(page: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(page).unwrap();
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = slug(line.trim_start_matches('#').replace('`', "").as_str());
        let mut anchor = base.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    seen
}

/// Why `target`, linked from `page`, does not resolve (None when it does).
fn broken(page: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("empty link".into());
    }
    if target.starts_with("http://") || target.starts_with("https://") {
        return None;
    }
    if target.starts_with("mailto:") {
        return Some("a mail address (report through the maintainers)".into());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().unwrap().join(path)
    };
    let resolved = normalize(&file);
    if !resolved.starts_with(root()) {
        return Some("points outside the repository".into());
    }
    if !resolved.exists() {
        return Some("no such file".into());
    }
    match anchor {
        Some(a) if resolved.extension().is_some_and(|e| e == "md") => {
            (!anchors(&resolved).contains(a)).then(|| format!("no heading `#{a}` there"))
        }
        _ => None,
    }
}

/// `path` with `.` and `..` removed, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn every_link_in_the_readme_and_docs_resolves_inside_the_repository() {
    let mut bad = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(
            !text.contains("../shared"),
            "{} names ../shared, which a clone does not have",
            page.display()
        );
        for target in links(&text) {
            checked += 1;
            if let Some(why) = broken(&page, &target) {
                bad.push(format!("{}: ({target}): {why}", page.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser right?"
    );
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_finds_links_and_catches_broken_ones() {
    let readme = root().join("README.md");
    let text = "See [a](docs/nothing.md), `[b](x.md)`, [c](#no-such) and\n\
                ```\n[d](fenced.md)\n```\n[e]: ../../outside.md\n";
    let found = links(text);
    assert_eq!(found, ["docs/nothing.md", "#no-such", "../../outside.md"]);
    assert_eq!(broken(&readme, "docs/nothing.md").unwrap(), "no such file");
    assert!(broken(&readme, "#no-such").unwrap().contains("no heading"));
    assert_eq!(
        broken(&readme, "../../outside.md").unwrap(),
        "points outside the repository"
    );
    assert!(broken(&readme, "LICENSE").is_none());
    assert_eq!(
        slug("Key agreement and login (`/rest/…`)"),
        "key-agreement-and-login-rest"
    );
}
