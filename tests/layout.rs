//! The service crate's rooms: no source file over 800 lines, and no import cycle between its
//! top-level modules (each names what it depends on with `crate::…`).
#![expect(clippy::tests_outside_test_module, reason = "integration tests live in tests/, not in a cfg(test) module")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules `text` names through `crate::NAME` or `crate::{NAME, …}`, comments aside.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The first path segment of each top-level item of the group; nested groups skipped.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            out.insert(name);
                        }
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(after));
        }
        rest = after;
    }
    out
}

/// Top-level module → the top-level modules it uses.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files_of: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(src()).expect("src") {
        let p = e.expect("entry").path();
        let name = p.file_stem().and_then(|s| s.to_str()).expect("name").to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        if p.is_dir() {
            rust_files(&p, &mut files);
        } else {
            files.push(p);
        }
        files_of.entry(name).or_default().extend(files);
    }
    let names: BTreeSet<String> = files_of.keys().cloned().collect();
    files_of
        .iter()
        .map(|(m, files)| {
            let mut deps = BTreeSet::new();
            for f in files {
                let text = std::fs::read_to_string(f).expect("read");
                deps.extend(crate_refs(&text).into_iter().filter(|d| names.contains(d) && d != m));
            }
            (m.clone(), deps)
        })
        .collect()
}

#[test]
fn no_source_file_is_over_the_limit() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    assert!(files.len() > 20, "the walk found the sources");
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).expect("read").lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn the_reference_reader_sees_both_forms() {
    let refs = crate_refs(
        "use crate::{store::{Store, VmRow}, fleet};\n// crate::api is a comment\nlet x = crate::jobs::f();\n",
    );
    assert_eq!(refs, BTreeSet::from(["fleet".to_string(), "jobs".to_string(), "store".to_string()]));
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let g = module_graph();
    assert!(g.get("fleet").is_some_and(|d| d.contains("store")), "the graph is read: {g:?}");
    // Depth-first search; a grey node met again closes a cycle.
    fn visit<'a>(
        n: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(true) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Some(false) => return None,
            None => {}
        }
        state.insert(n, true);
        path.push(n);
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n, false);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if let Some(cycle) = visit(m, &g, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}
