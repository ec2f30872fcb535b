//! The dependency rules of `docs/architecture.md`, checked on the source.
//!
//! For every crate of the workspace, each `crate::`/`super::` path in
//! non-test code is resolved to the module file it names. Two rules follow:
//!
//! 1. **No circles.** No module imports another that imports it back (the
//!    module graph between files, and between the folders of `src/`, is
//!    acyclic).
//! 2. **Layers.** A folder of `src/` imports only the folders below it, as
//!    listed in [`LAYERS`] (for example `xen` uses the ioreq ABI but not the
//!    engine, the trace or the machine).
//!
//! Test modules (`#[cfg(test)] mod ... { }`) are left out: a test may drive
//! a module from above.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which folders of `src/` each folder may import (besides itself).
const LAYERS: &[(&str, &[&str])] = &[
    ("app", &["cli", "control", "ioreq", "machine", "net", "trace", "xen"]),
    ("machine", &["cli", "control", "ioreq", "trace", "xen"]),
    ("cli", &["control"]),
    ("control", &[]),
    ("trace", &["ioreq"]),
    ("ioreq", &[]),
    // Linux host resources (taps): used by app only, uses nothing of the crate.
    ("net", &[]),
    ("xen", &["ioreq"]),
];

/// Files of `src/xen/` may use only these modules of `src/ioreq/`.
const XEN_MAY_USE_FROM_IOREQ: &[&str] = &["ioreq/mod.rs", "ioreq/abi.rs", "ioreq/handler.rs"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Source with comments, string and char literals blanked out.
#[allow(clippy::too_many_lines)] // one tokenizer loop
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"' | b'#')) && (i == 0 || !is_ident(b[i - 1])) {
            // raw string r"..." / r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend_from_slice(b"\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.extend_from_slice(b"\"\"");
        } else if c == b'\'' {
            // a char literal ('x', '\n', '\u{..}') or a lifetime ('a)
            let close = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..].iter().position(|&x| x == b'\'').map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    out.extend_from_slice(b"' '");
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `s` without `#[cfg(test)]` items (a module or function with a body).
fn without_tests(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(p) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..p]);
        let after = &rest[p..];
        let open = after.find('{');
        let semi = after.find(';');
        match (open, semi) {
            (Some(o), s2) if s2.is_none_or(|s2| o < s2) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (k, ch) in after[o..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            (_, Some(s2)) => rest = &after[s2 + 1..],
            _ => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Every path that starts at `crate::` or `super::`, with `{a, b::c}` groups
/// expanded, as segment lists (`super` kept as a segment).
fn paths(s: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let b = s.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(p) = s[from..].find(start) {
            let at = from + p;
            from = at + start.len();
            if at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b':') {
                continue;
            }
            let root = start.trim_end_matches(':').to_string();
            expand(&s[at + start.len()..], vec![root], &mut found);
        }
    }
    found
}

/// Reads one path tail (`a::b`, `a::{b, c::d}`, `*`) after `prefix`.
fn expand(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 0usize;
        let mut item = String::new();
        for ch in inner.chars() {
            match ch {
                '{' => {
                    depth += 1;
                    item.push(ch);
                }
                '}' if depth == 0 => {
                    if !item.trim().is_empty() {
                        expand(&item, prefix.clone(), out);
                    }
                    return;
                }
                '}' => {
                    depth -= 1;
                    item.push(ch);
                }
                ',' if depth == 0 => {
                    expand(&item, prefix.clone(), out);
                    item.clear();
                }
                _ => item.push(ch),
            }
        }
        return;
    }
    let ident: String = s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    if ident.is_empty() {
        out.push(prefix);
        return;
    }
    let mut p = prefix;
    p.push(ident.clone());
    let rest = &s[ident.len()..];
    match rest.strip_prefix("::") {
        Some(r) => expand(r, p, out),
        None => out.push(p),
    }
}

/// The module path (`["trace", "record"]`) of a file below `root` (`src/`).
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap();
    let mut segs: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = segs.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        segs.push(stem.to_string());
    }
    segs
}

/// The file of the longest module prefix of `path` (absolute, no `super`).
fn file_of(root: &Path, path: &[String], files: &BTreeSet<PathBuf>) -> Option<PathBuf> {
    for n in (1..=path.len()).rev() {
        let dir: PathBuf = path[..n].iter().collect();
        for cand in [root.join(&dir).with_extension("rs"), root.join(&dir).join("mod.rs")] {
            if files.contains(&cand) {
                return Some(cand);
            }
        }
    }
    None
}

fn rust_files(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.insert(p);
        }
    }
}

/// Files declared as `#[cfg(test)] mod name;`: test code as a whole.
fn test_only_files(root: &Path, files: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = strip(&std::fs::read_to_string(f).unwrap());
        let mut rest = text.as_str();
        while let Some(p) = rest.find("#[cfg(test)]") {
            rest = &rest[p + "#[cfg(test)]".len()..];
            let decl = rest.trim_start().trim_start_matches("pub(crate) ").trim_start_matches("pub ");
            if let Some(tail) = decl.strip_prefix("mod ") {
                let name: String = tail.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if tail[name.len()..].trim_start().starts_with(';') {
                    let mut m = module_of(root, f);
                    m.push(name);
                    if let Some(t) = file_of(root, &m, files).filter(|t| module_of(root, t) == m) {
                        out.insert(t);
                    }
                }
            }
        }
    }
    out
}

/// File -> files it imports, for the crate rooted at `root` (`<crate>/src`).
fn graph(root: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    rust_files(root, &mut files);
    let tests_only = test_only_files(root, &files);
    let mut g = BTreeMap::new();
    for f in files.iter().filter(|f| !tests_only.contains(*f)) {
        let here = module_of(root, f);
        let text = without_tests(&strip(&std::fs::read_to_string(f).unwrap()));
        let mut deps = BTreeSet::new();
        for p in paths(&text) {
            let abs: Vec<String> = if p[0] == "crate" {
                p[1..].to_vec()
            } else {
                // super:: in a/b.rs is module a; in a/b/mod.rs it is a too.
                let mut base = here.clone();
                let mut segs = p.as_slice();
                while segs.first().is_some_and(|s| s == "super") {
                    base.pop();
                    segs = &segs[1..];
                }
                base.extend(segs.iter().cloned());
                base
            };
            if let Some(target) = file_of(root, &abs, &files) {
                // A file naming its own items is no import.
                if &target != f {
                    deps.insert(target);
                }
            }
        }
        g.insert(f.clone(), deps);
    }
    g
}

/// `a/b.rs` -> `a`; `a/mod.rs` -> `a`; `lib.rs` -> ``.
fn folder(root: &Path, f: &Path) -> String {
    module_of(root, f).first().cloned().unwrap_or_default()
}

fn short(root: &Path, f: &Path) -> String {
    f.strip_prefix(root).unwrap().display().to_string()
}

/// Every cycle of the graph, reported as the files on it (Tarjan-free: a
/// DFS that reports back edges).
fn cycles(g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    fn visit(
        n: &PathBuf,
        g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        out: &mut Vec<Vec<PathBuf>>,
    ) {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            out.push(stack[pos..].to_vec());
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.clone());
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, stack, done, out);
        }
        stack.pop();
        done.insert(n.clone());
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, g, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

/// Imports of a module by its own parent (`mod.rs`/`lib.rs` re-exporting
/// or calling a child) are how Rust modules are built, not a layering edge
/// back; a child importing its parent's items is the edge that counts.
fn without_parent_to_child(
    root: &Path,
    g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    g.iter()
        .map(|(f, deps)| {
            let here = module_of(root, f);
            let is_parent_file = f.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs");
            let kept = deps
                .iter()
                .filter(|d| {
                    let m = module_of(root, d);
                    !(is_parent_file && m.len() > here.len() && m.starts_with(&here))
                })
                .cloned()
                .collect();
            (f.clone(), kept)
        })
        .collect()
}

fn crate_roots() -> Vec<PathBuf> {
    let r = repo();
    vec![r.join("src"), r.join("devices/src"), r.join("fw_cfg/src"), r.join("roms/src")]
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut report = Vec::new();
    for root in crate_roots() {
        let g = without_parent_to_child(&root, &graph(&root));
        for c in cycles(&g) {
            let names: Vec<String> = c.iter().map(|f| short(&root, f)).collect();
            report.push(format!("{}: {}", root.display(), names.join(" -> ")));
        }
    }
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

#[test]
fn folders_of_src_import_only_the_layers_below_them() {
    let root = repo().join("src");
    let g = graph(&root);
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut bad = Vec::new();
    for (f, deps) in &g {
        let from = folder(&root, f);
        let Some(ok) = allowed.get(from.as_str()) else { continue }; // lib.rs, main.rs
        for d in deps {
            let to = folder(&root, d);
            if to == from || to.is_empty() {
                continue;
            }
            if !ok.contains(&to.as_str()) {
                bad.push(format!("{} imports {} ({from} may use {ok:?})", short(&root, f), short(&root, d)));
            } else if from == "xen" && !XEN_MAY_USE_FROM_IOREQ.contains(&short(&root, d).as_str()) {
                bad.push(format!("{} imports {} (xen may use only the ioreq ABI)", short(&root, f), short(&root, d)));
            }
        }
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_imports_groups_and_circles() {
    let text = strip("use crate::a::{b, c::{d, e}};\n// crate::zz\nlet s = \"crate::yy\"; super::f::g();");
    let p = paths(&text);
    let want: Vec<Vec<String>> =
        [vec!["crate", "a", "b"], vec!["crate", "a", "c", "d"], vec!["crate", "a", "c", "e"], vec!["super", "f", "g"]]
            .iter()
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .collect();
    assert_eq!(p, want);
    assert_eq!(without_tests("a\n#[cfg(test)]\nmod tests { fn x() { crate::q(); } }\nb"), "a\n\nb");
    let mut g = BTreeMap::new();
    g.insert(PathBuf::from("x"), BTreeSet::from([PathBuf::from("y")]));
    g.insert(PathBuf::from("y"), BTreeSet::from([PathBuf::from("x")]));
    assert_eq!(cycles(&g).len(), 1);
}
