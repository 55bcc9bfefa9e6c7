//! The layers of the crate point one way (docs/architecture.md): this test reads every
//! source file under `src/` and fails if a layer names a module it may not use.
//!
//! What it checks, and only this: in code (comments are skipped), every path that
//! starts at the crate root, `crate::NAME` (also `crate::{NAME, ...}`), and every
//! `super::` that climbs out of the layer to the root and then names a module. The
//! first module named must be one the file's layer may use:
//!
//! | layer | may use |
//! |---|---|
//! | `src/base/` | nothing of the crate but itself |
//! | `src/hub/` | `base` |
//! | `src/service/` | `base`, `hub` |
//! | `src/model/` | `base`, `service` |
//! | `src/serve/` | anything but `bench` |
//! | `src/bench/` | anything |
//!
//! A file's `super::` is resolved from the module its path gives; an inline module
//! (`mod tests { ... }`) is one level deeper than that, so the check can only be
//! stricter there, never miss an escape.

use std::path::{Path, PathBuf};

/// What each layer may use, besides itself.
fn may_use(layer: &str, module: &str) -> bool {
    match layer {
        "base" => false,
        "hub" => module == "base",
        "service" => matches!(module, "base" | "hub"),
        "model" => matches!(module, "base" | "service"),
        "serve" => module != "bench",
        "bench" => true,
        _ => true,
    }
}

/// One reference from a file to a module at the crate root.
#[derive(Debug, PartialEq)]
struct Reference {
    line: usize,
    module: String,
}

/// The code of a line: without its `//` comment (doc comments included).
fn code(line: &str) -> &str {
    // A `//` inside a string ("redis://") cuts the line short: that can only hide a
    // reference later on that line, which the crate's style never has.
    line.find("//").map_or(line, |i| &line[..i])
}

/// The leading identifier of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each item of a `{a, b::c, d::{e}}` group that starts `s`.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut start_of_item = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    start_of_item = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                start_of_item = true;
                continue;
            }
            _ => {}
        }
        if depth == 1 && start_of_item && !c.is_whitespace() {
            start_of_item = false;
            let head = ident(&s[i..]);
            if !head.is_empty() {
                heads.push(head.to_string());
            }
        }
    }
    heads
}

/// The modules at the crate root that `text` names, for a file whose module path
/// (from `src/`) is `module_path` (`["hub", "bridge"]` for `src/hub/bridge.rs`).
fn references(text: &str, module_path: &[String]) -> Vec<Reference> {
    // Code only, lines kept, so that a `crate::{` group may span lines.
    let code_text: String = text.lines().map(|l| format!("{}\n", code(l))).collect();
    let line_at = |i: usize| code_text[..i].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut push_after = |i: usize, rest: &str| {
        if rest.starts_with('{') {
            for module in group_heads(rest) {
                out.push(Reference {
                    line: line_at(i),
                    module,
                });
            }
        } else {
            let module = ident(rest);
            if !module.is_empty() {
                out.push(Reference {
                    line: line_at(i),
                    module: module.to_string(),
                });
            }
        }
    };
    let boundary = |i: usize| {
        code_text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    };
    for (i, _) in code_text.match_indices("crate::") {
        if boundary(i) {
            push_after(i, &code_text[i + "crate::".len()..]);
        }
    }
    for (i, _) in code_text.match_indices("super::") {
        // Only the start of a chain: `super::super::x` is one reference.
        if !boundary(i) || code_text[..i].ends_with("super::") {
            continue;
        }
        let mut rest = &code_text[i..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        // From `a/b.rs` (module a::b) one `super` is `a`; from `a/mod.rs` (module a)
        // it is the root.
        if ups >= module_path.len() {
            push_after(i, rest);
        }
    }
    out
}

/// The lines of a file of `service::ws` (module path `path`) that name
/// `service::http`: from the root, or with as many `super::` as lead back to `service`.
fn ws_uses_http(text: &str, path: &[String]) -> Vec<usize> {
    let ups = "super::".repeat(path.len() - 1);
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = code(line);
        let mut named = Vec::new();
        for (i, _) in line.match_indices("crate::service::") {
            named.push(&line[i + "crate::service::".len()..]);
        }
        for (i, _) in line.match_indices(&ups) {
            let before = &line[..i];
            if !before.ends_with("super::")
                && !before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
            {
                named.push(&line[i + ups.len()..]);
            }
        }
        let http = named.iter().any(|rest| {
            ident(rest) == "http"
                || rest.starts_with('{') && group_heads(rest).iter().any(|h| h == "http")
        });
        if http {
            lines.push(n + 1);
        }
    }
    lines
}

/// The module path of a file under `src/`: `hub/mod.rs` is `["hub"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules declared at the crate root (`pub mod x;` in `src/lib.rs`).
fn root_modules(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            let l = code(l).trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")
                .map(|m| m.trim_end_matches(';').trim().to_string())
        })
        .collect()
}

/// Every reference in `src/` that breaks `rule(file's top module, module named)`, as
/// `path:line: message`, for the files whose module path `select` accepts.
fn violations(
    select: impl Fn(&[String]) -> bool,
    rule: impl Fn(&[String], &str) -> bool,
) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = root_modules(&src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "read the sources: {files:?}");
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let path = module_path(rel);
        if path.is_empty() || !select(&path) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for r in references(&text, &path) {
            if modules.contains(&r.module) && r.module != path[0] && !rule(&path, &r.module) {
                bad.push(format!(
                    "src/{}:{}: {} uses {}",
                    rel.display(),
                    r.line,
                    path[0],
                    r.module
                ));
            }
        }
    }
    bad
}

#[test]
fn no_layer_uses_a_layer_above_it() {
    let bad = violations(|_| true, |path, module| may_use(&path[0], module));
    assert!(bad.is_empty(), "layers point up:\n{}", bad.join("\n"));
}

#[test]
fn ws_does_not_use_http() {
    // Within `service`: http depends on ws (it answers the upgrade), never the reverse.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("service"), &mut files);
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let path = module_path(rel);
        if path.get(1).map(String::as_str) != Some("ws") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for n in ws_uses_http(&text, &path) {
            bad.push(format!("src/{}:{n}: ws uses http", rel.display()));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_scanner_sees_every_form_of_a_reference() {
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let text = "\
//! Nothing here may use crate::model (a comment).
use crate::model::Limits;
use crate::{base::Clock, service::{Session, Service}};
use crate::{
    hub,
};
fn f() { crate::bench::run(); }
use super::model::Server;
let s = \"redis://x\"; // crate::bench in a comment
use mycrate::serve; // not the crate root
";
    let found: Vec<(usize, String)> = references(text, &path(&["hub"]))
        .into_iter()
        .map(|r| (r.line, r.module))
        .collect();
    let expected: Vec<(usize, String)> = [
        (2, "model"),
        (3, "base"),
        (3, "service"),
        (4, "hub"),
        (7, "bench"),
        (8, "model"),
    ]
    .into_iter()
    .map(|(l, m)| (l, m.to_string()))
    .collect();
    assert_eq!(found, expected);
    // Inside the layer, `super::` does not leave it: `hub/bridge.rs` naming its sibling.
    assert!(references("use super::names::x;", &path(&["hub", "bridge"])).is_empty());
    // Two levels up from `service/chat/member.rs` is still `service`; three is the root.
    assert!(references(
        "super::super::parse()",
        &path(&["service", "chat", "member"])
    )
    .is_empty());
    assert_eq!(
        references(
            "super::super::super::model::Server",
            &path(&["service", "chat", "member"])
        ),
        [Reference {
            line: 1,
            module: "model".into()
        }]
    );
}

#[test]
fn the_ws_check_sees_http_named_from_ws() {
    let ws = ["service".to_string(), "ws".to_string()];
    let text = "use super::http::{self, Reply};\nuse crate::service::{base, http};\nuse super::wsx;\nuse crate::service::http_like;\n// super::http in a comment\n";
    assert_eq!(ws_uses_http(text, &ws), [1, 2]);
    let deeper = ["service".to_string(), "ws".to_string(), "frame".to_string()];
    assert_eq!(
        ws_uses_http(
            "use super::super::http::Reply;\nuse super::http::X;\n",
            &deeper
        ),
        [1]
    );
}

#[test]
fn a_file_is_placed_in_its_layer_by_its_path() {
    assert_eq!(module_path(Path::new("hub/mod.rs")), ["hub"]);
    assert_eq!(module_path(Path::new("hub/bridge.rs")), ["hub", "bridge"]);
    assert_eq!(
        module_path(Path::new("service/chat/member.rs")),
        ["service", "chat", "member"]
    );
    assert!(!may_use("service", "model"));
    assert!(!may_use("base", "hub"));
    assert!(!may_use("hub", "service"));
    assert!(!may_use("model", "hub"));
    assert!(!may_use("serve", "bench"));
    assert!(may_use("bench", "serve"));
}
