//! The documentation against the binary and the tree: the README's `serve` flags table
//! lists exactly what `serve --help` shows, its layout names every test file, and the
//! docs index names every page. When a flag is added, its row goes into the table.

use std::collections::BTreeSet;
use std::process::Command;

fn read(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The lines of the README section titled `title`, up to the next `## `.
fn section<'a>(readme: &'a str, title: &str) -> Vec<&'a str> {
    readme
        .lines()
        .skip_while(|l| l.trim() != title)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect()
}

/// Every `--long-flag` written in `text`.
fn long_flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'-');
        let mut end = start + 2;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'-')
        {
            end += 1;
        }
        if before_ok && end > start + 2 && b[start + 2].is_ascii_lowercase() {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 2);
    }
    out
}

fn serve_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_multiclient"))
        .args(["serve", "--help"])
        .output()
        .expect("run serve --help");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_readme_flags_table_lists_exactly_the_flags_of_serve_help() {
    let help = serve_help();
    // Options are the lines of --help that start (indented) with a flag.
    let in_help: BTreeSet<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| long_flags(l.split("  ").next().unwrap_or("")))
        .filter(|f| f != "--help")
        .collect();
    assert!(
        in_help.contains("--service") && in_help.len() > 10,
        "{in_help:?}"
    );
    let readme = read("README.md");
    let in_table: BTreeSet<String> = section(&readme, "## `serve` flags")
        .into_iter()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| long_flags(l.split('|').nth(1).unwrap_or("")))
        .collect();
    let missing: Vec<_> = in_help.difference(&in_table).collect();
    let stale: Vec<_> = in_table.difference(&in_help).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README's `serve` flags table: add rows for {missing:?}; remove rows for {stale:?} \
         (not in `serve --help`)"
    );
}

#[test]
fn serve_help_says_chat_is_served_by_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_multiclient"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let serve = help
        .lines()
        .find(|l| l.trim_start().starts_with("serve "))
        .expect("serve in --help");
    assert!(serve.contains("chat"), "{serve}");
    assert!(serve_help().contains("chat"));
}

#[test]
fn the_readme_layout_names_every_test_file() {
    let readme = read("README.md");
    let layout = section(&readme, "## Layout").join("\n");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut unnamed = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".rs") && !layout.contains(&name) {
            unnamed.push(name);
        }
    }
    assert!(
        unnamed.is_empty(),
        "README's layout does not name {unnamed:?}"
    );
}

#[test]
fn the_docs_index_names_every_page() {
    let index = read("docs/README.md");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut unnamed = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") && name != "README.md" && !index.contains(&format!("({name})")) {
            unnamed.push(name);
        }
    }
    assert!(
        unnamed.is_empty(),
        "docs/README.md does not link {unnamed:?}"
    );
}

#[test]
fn long_flags_are_found_in_table_cells_and_help_lines() {
    let f = long_flags("`-v`, `--verbose` / `-q`, `--quiet`");
    assert_eq!(f.into_iter().collect::<Vec<_>>(), ["--quiet", "--verbose"]);
    let f = long_flags("--max-conns <MAX_CONNS>");
    assert_eq!(f.into_iter().collect::<Vec<_>>(), ["--max-conns"]);
    assert!(long_flags("a -- b ---x").is_empty());
}
