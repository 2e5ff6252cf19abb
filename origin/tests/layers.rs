//! The origin's layers, read from its sources: `http` → `service` →
//! `repo` → `storage`. A file of a layer never names a layer above it (by
//! `crate::…`, or by `super::…` climbing out of its own), nor a re-export
//! of the crate root; `http` never names `repo` (it goes through the
//! services); `config` names no layer; and the crate's top-level modules (`repo::catalog`,
//! `service::ingest`, `config`, the crate root, …) never import each other
//! in a circle, within a layer or across layers.
//!
//! Run: `cargo test -p cascade-origin --test layers`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first.
const LAYERS: [&str; 4] = ["storage", "repo", "service", "http"];

/// One source file: its module path and its text without comments and
/// literals.
struct Source {
    /// `src/…` path, for messages.
    file: String,
    /// Its module path from the crate root: `["service", "ingest", "worker"]`.
    module: Vec<String>,
    code: String,
}

#[test]
fn lower_layers_never_name_higher_ones() {
    let sources = read_sources();
    let problems = layer_violations(&sources);
    assert!(
        problems.is_empty(),
        "layer rule broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn top_level_modules_import_no_circle() {
    let sources = read_sources();
    let graph = module_graph(&sources);
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "modules that import each other in a circle: {cycles:?}"
    );
}

/// Guards against a checker that passes because it reads nothing.
#[test]
fn the_checker_sees_the_layers() {
    let sources = read_sources();
    for layer in LAYERS {
        assert!(
            sources
                .iter()
                .any(|s| s.module.first().map(String::as_str) == Some(layer)),
            "no sources of {layer}"
        );
    }
    let graph = module_graph(&sources);
    let edge = |from: &str, to: &str| graph.get(from).is_some_and(|t| t.contains(to));
    assert!(edge("http::accounts", "service::accounts"), "{graph:?}");
    assert!(edge("service::accounts", "repo::accounts"), "{graph:?}");
    assert!(edge("repo::accounts", "storage::db"), "{graph:?}");
    assert!(edge("service::ingest", "service::state"), "{graph:?}");
}

#[test]
fn a_repo_naming_http_is_caught() {
    let bad = [
        "use crate::http::error::Plain;",
        "use crate::{http, storage};",
        "use crate::{storage::{db, Error}, service::state::State};",
        "fn f() { super::super::http::app; }",
        "fn f() -> crate::http::error::Plain { todo!() }",
        "mod inner { use super::super::super::service::x; }",
    ];
    for code in bad {
        let s = source("src/repo/accounts.rs", code);
        assert_eq!(layer_violations(&[s]).len(), 1, "{code}");
    }
    let fine = [
        "use crate::storage::{db::Db, Error};",
        "// use crate::http::error::Plain;",
        "/* crate::http /* nested */ crate::service */",
        "const S: &str = \"crate::http::x\";",
        "const R: &str = r#\"crate::http \"quoted\" \"#;",
        "fn f<'a>(x: &'a str) -> char { 'c' }",
        "mod tests { use super::*; use super::super::catalog; }",
        "use http::HeaderMap;",
    ];
    for code in fine {
        let s = source("src/repo/accounts.rs", code);
        assert!(layer_violations(&[s]).is_empty(), "{code}");
    }
    let config = source(
        "src/config.rs",
        "use crate::service::ingest::transcode::Rung;",
    );
    assert_eq!(layer_violations(&[config]).len(), 1);
    let skip = source("src/http/assets.rs", "use crate::repo::assets;");
    assert_eq!(layer_violations(&[skip]).len(), 1);
    let reexport = source("src/repo/jobs.rs", "use crate::transcode::VideoCodec;");
    assert_eq!(layer_violations(&[reexport]).len(), 1);
    let down = source(
        "src/http/assets.rs",
        "use crate::{service::assets, storage::Error};",
    );
    assert!(layer_violations(&[down]).is_empty());
}

#[test]
fn circles_are_caught() {
    let a = source("src/service/a.rs", "use crate::service::b::B;");
    let b = source("src/service/b/mod.rs", "mod c;");
    let c = source("src/service/b/c.rs", "use super::super::a::A;");
    let graph = module_graph(&[a, b, c]);
    assert_eq!(
        cycles(&graph),
        vec![vec!["service::a".to_string(), "service::b".to_string()]]
    );
    // Through a layer's re-export of its child.
    let storage = source(
        "src/storage/mod.rs",
        "mod db; mod error; pub(crate) use error::Error;",
    );
    let db = source("src/storage/db.rs", "use crate::storage::Error;");
    let error = source("src/storage/error.rs", "use crate::storage::db::Db;");
    assert_eq!(cycles(&module_graph(&[storage, db, error])).len(), 1);
    // Through a re-export at the crate root: lib names everything.
    let lib = source("src/lib.rs", "mod repo; pub use repo::x::X;");
    let x = source("src/repo/x.rs", "use crate::X;");
    assert_eq!(cycles(&module_graph(&[lib, x])).len(), 1);
}

// ---- the checker ------------------------------------------------------------------

fn source(file: &str, code: &str) -> Source {
    Source {
        file: file.to_string(),
        module: module_of(Path::new(file.trim_start_matches("src/"))),
        code: strip(code),
    }
}

fn read_sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "too few sources under {}", src.display());
    files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap();
            Source {
                file: format!("src/{}", rel.display()),
                module: module_of(rel),
                code: strip(&std::fs::read_to_string(f).unwrap()),
            }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `service/ingest/worker.rs` → `[service, ingest, worker]`; `http/mod.rs`
/// → `[http]`; `lib.rs` → `[]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The rank of a layer, if `name` is one.
fn rank(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == name)
}

/// Every file of a layer that names a higher layer, and every name of a
/// layer in `config`.
fn layer_violations(sources: &[Source]) -> Vec<String> {
    let mut problems = Vec::new();
    for s in sources {
        let own = match s.module.first().map(String::as_str) {
            Some("config") => None,
            Some(top) => match rank(top) {
                Some(r) => Some(r),
                None => continue,
            },
            // The crate root wires the layers together.
            None => continue,
        };
        for path in references(s) {
            let first = path.first().map(String::as_str).unwrap_or("");
            let named = match rank(first) {
                Some(named) => named,
                None if first == "config" => continue,
                // A root re-export (`crate::transcode`) may lead anywhere.
                None => {
                    problems.push(format!(
                        "{} names crate::{}, a re-export of the crate root: name the item where it lives",
                        s.file,
                        path.join("::")
                    ));
                    continue;
                }
            };
            let higher = own.is_none_or(|r| named > r);
            // Handlers reach the database through services; everyone may
            // use storage (the error type, the clock, ids).
            let skips = own == rank("http") && Some(named) == rank("repo");
            if higher || skips {
                problems.push(format!("{} names crate::{}", s.file, path.join("::")));
            }
        }
    }
    problems
}

/// The node a path belongs to: `layer::module` for what is inside a
/// module of a layer, `layer` for what the layer's own `mod.rs` holds,
/// `config`, or `crate` for the root and what it re-exports. `modules`:
/// the `layer::module` that exist.
fn node(path: &[String], modules: &BTreeSet<String>) -> String {
    match path {
        [layer, module, ..] if modules.contains(&format!("{layer}::{module}")) => {
            format!("{layer}::{module}")
        }
        [layer, ..] if rank(layer).is_some() => layer.clone(),
        [first, ..] if first == "config" => first.clone(),
        _ => "crate".to_string(),
    }
}

/// Which top-level module imports which.
fn module_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = sources
        .iter()
        .filter(|s| s.module.len() >= 2 && rank(&s.module[0]).is_some())
        .map(|s| format!("{}::{}", s.module[0], s.module[1]))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources {
        let from = node(&s.module, &modules);
        let edges = graph.entry(from.clone()).or_default();
        // The root's `mod` items are its children, not imports, but what
        // it re-exports (`pub use`) and uses is named by path below.
        for path in references(s) {
            let to = node(&path, &modules);
            if to != from {
                edges.insert(to);
            }
        }
        // A parent names its child modules without `crate::`: the root's
        // `pub use service::…`, a layer's `pub(crate) use error::…`.
        let children: Vec<String> = match s.module.as_slice() {
            [] => LAYERS
                .iter()
                .chain(&["config"])
                .map(|l| l.to_string())
                .collect(),
            [layer] => modules
                .iter()
                .filter_map(|m| m.strip_prefix(&format!("{layer}::")))
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        for child in children {
            for tail in child_uses(&s.code, &child) {
                let path: Vec<String> = s.module.iter().cloned().chain(tail).collect();
                let to = node(&path, &modules);
                if to != from {
                    edges.insert(to);
                }
            }
        }
    }
    graph
}

/// The groups of nodes that import each other in a circle (strongly
/// connected components of more than one node), each sorted.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm.
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(w: &mut Walk<'g>, v: &'g str) {
        let i = w.index.len();
        w.index.insert(v, i);
        w.low.insert(v, i);
        w.stack.push(v);
        w.on_stack.insert(v);
        for next in w.graph.get(v).into_iter().flatten() {
            let next = next.as_str();
            if !w.index.contains_key(next) {
                visit(w, next);
                let low = w.low[v].min(w.low[next]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(next) {
                let low = w.low[v].min(w.index[next]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut group = Vec::new();
            while let Some(top) = w.stack.pop() {
                w.on_stack.remove(top);
                group.push(top.to_string());
                if top == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                w.found.push(group);
            }
        }
    }
    let mut w = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.as_str()).chain(v.iter().map(String::as_str)))
        .collect();
    for v in nodes {
        if !w.index.contains_key(v) {
            visit(&mut w, v);
        }
    }
    w.found.sort();
    w.found
}

/// Every path a file names from the crate root, through `crate::` or
/// through `super::` (resolved against the module it is written in,
/// inline `mod x { … }` blocks included), with `{…}` groups expanded.
fn references(s: &Source) -> Vec<Vec<String>> {
    let code = &s.code;
    let bytes = code.as_bytes();
    let inline = inline_modules(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !is_ident(bytes[i - 1] as char) && bytes[i - 1] != b':';
        if at_word_start && code[i..].starts_with("crate::") {
            let (paths, end) = parse_tree(code, i + "crate::".len());
            out.extend(paths);
            i = end;
        } else if at_word_start && code[i..].starts_with("super::") {
            let mut base = s.module.clone();
            base.extend(
                inline
                    .iter()
                    .filter(|m| m.0 < i && i < m.1)
                    .map(|m| m.2.clone()),
            );
            let (paths, end) = parse_tree(code, i);
            for mut p in paths {
                let mut module = base.clone();
                while p.first().map(String::as_str) == Some("super") {
                    p.remove(0);
                    module.pop();
                }
                module.extend(p);
                out.push(module);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The paths of `use CHILD::…` items (relative to the file's module).
fn child_uses(code: &str, child: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let needle = format!("use {child}::");
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let start = from + at + "use ".len();
        let (paths, end) = parse_tree(code, start);
        out.extend(paths);
        from = end.max(start + 1);
    }
    out
}

/// Parses a use tree (`a::b::{c, d::e}`) from `at`; answers its paths and
/// where it ends. A path stops at the first segment that is not an
/// identifier followed by `::` (a type's generics, a call, a macro).
fn parse_tree(code: &str, at: usize) -> (Vec<Vec<String>>, usize) {
    let bytes = code.as_bytes();
    let mut i = at;
    let mut prefix: Vec<String> = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i] as char).is_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'{' {
            // A group: each item is a tree of its own.
            let mut paths = Vec::new();
            i += 1;
            loop {
                while i < bytes.len() && (bytes[i] as char).is_whitespace()
                    || bytes.get(i) == Some(&b',')
                {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    return (
                        paths
                            .into_iter()
                            .map(|p: Vec<String>| prefix.iter().cloned().chain(p).collect())
                            .collect(),
                        i + 1,
                    );
                }
                let (inner, end) = parse_tree(code, i);
                paths.extend(inner);
                // Skip an `as alias`.
                i = end;
                while i < bytes.len() && !matches!(bytes[i], b',' | b'}') {
                    if bytes[i] == b'{' {
                        break;
                    }
                    i += 1;
                }
            }
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i] as char) {
            i += 1;
        }
        if i == start {
            // `*`, or nothing.
            return (vec![prefix], i);
        }
        prefix.push(code[start..i].to_string());
        if code[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// The spans of inline `mod name { … }` blocks: (open, close, name).
fn inline_modules(code: &str) -> Vec<(usize, usize, String)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = code[i..].find("mod ") {
        let start = i + at;
        i = start + 4;
        if start > 0 && is_ident(bytes[start - 1] as char) {
            continue;
        }
        let name_start = i;
        while i < bytes.len() && is_ident(bytes[i] as char) {
            i += 1;
        }
        let name = code[name_start..i].to_string();
        while i < bytes.len() && (bytes[i] as char).is_whitespace() {
            i += 1;
        }
        if name.is_empty() || bytes.get(i) != Some(&b'{') {
            continue;
        }
        let open = i;
        let mut depth = 0usize;
        let mut close = bytes.len();
        for (j, b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((open, close, name));
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The code without comments, string literals and char literals (each
/// replaced by spaces, so positions keep their meaning roughly).
fn strip(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !chars.get(i.wrapping_sub(1)).is_some_and(|p| is_ident(*p))
            && raw_string_hashes(&chars, i + if c == 'b' { 2 } else { 1 }).is_some()
        {
            let open = i + if c == 'b' { 2 } else { 1 };
            let hashes = raw_string_hashes(&chars, open).unwrap_or(0);
            i = open + hashes + 1;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    i += hashes + 1;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{1F600}'.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            // A lifetime's quote, or code.
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At `open` (just after `r` or `br`): the number of `#` before a `"`, if
/// a raw string starts there.
fn raw_string_hashes(chars: &[char], open: usize) -> Option<usize> {
    let mut n = 0;
    while chars.get(open + n) == Some(&'#') {
        n += 1;
    }
    (chars.get(open + n) == Some(&'"')).then_some(n)
}
