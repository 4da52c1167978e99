//! The rules of docs/ARCHITECTURE.md that a machine can check: no import circle among the
//! modules of `src/` and of `mocks/src/`, no proxy-wasm use outside `src/adapter/`, and no
//! source file with more than 600 lines of code ahead of its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

const MAX_CODE_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The file's text before its test module (`#[cfg(test)]` followed by an inline `mod`),
/// comments removed.
fn code_ahead_of_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|n| n.trim_start()).unwrap_or("");
        let out_of_line =
            (next.starts_with("mod ") && next.ends_with(';')) || next.starts_with("#[path");
        if l.trim() == "#[cfg(test)]" && !out_of_line {
            end = i;
            break;
        }
    }
    lines[..end]
        .iter()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module path of a file under `src_dir` (`crate`, `keycache`, `keycache::fetch`, ...);
/// `None` for test-only files (`tests.rs`, `*_tests.rs`, anything under a `tests/` folder).
fn module_of(src_dir: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src_dir).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .iter()
        .any(|p| p == "tests" || p.ends_with("_tests") || p == "bin")
    {
        return None;
    }
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    Some(if parts.is_empty() {
        "crate".into()
    } else {
        parts.join("::")
    })
}

/// The longest known module that `path` (after `crate::` / `super::`) names.
fn resolve(cur: &str, path: &str, known: &BTreeSet<String>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if cur == "crate" {
        vec![]
    } else {
        cur.split("::").collect()
    };
    match segs.first().copied() {
        Some("crate") => {
            base.clear();
            segs.remove(0);
        }
        Some("super") => {
            while segs.first() == Some(&"super") {
                base.pop();
                segs.remove(0);
            }
        }
        _ => return None,
    }
    let full: Vec<&str> = base.into_iter().chain(segs).collect();
    (1..=full.len())
        .rev()
        .map(|i| full[..i].join("::"))
        .find(|m| known.contains(m))
}

fn import_graph(src_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    let code: BTreeMap<String, String> = files
        .iter()
        .filter_map(|f| {
            let m = module_of(src_dir, f)?;
            Some((m, code_ahead_of_tests(&std::fs::read_to_string(f).unwrap())))
        })
        .collect();
    let known: BTreeSet<String> = code.keys().cloned().collect();
    let path_re = Regex::new(r"\b((?:crate|super)(?:::\w+)+)").unwrap();
    let group_re = Regex::new(r"use\s+((?:crate|super)(?:::\w+)*)::\{([^;]*)\};").unwrap();
    let nested_re = Regex::new(r"\{[^}]*\}").unwrap();
    let mut graph = BTreeMap::new();
    for (m, text) in &code {
        let mut deps = BTreeSet::new();
        let mut add = |target: Option<String>| {
            if let Some(t) = target {
                let nested = t.starts_with(&format!("{m}::")) || m.starts_with(&format!("{t}::"));
                if t != *m && !nested {
                    deps.insert(t);
                }
            }
        };
        for c in path_re.captures_iter(text) {
            add(resolve(m, &c[1], &known));
        }
        for c in group_re.captures_iter(text) {
            let inner = nested_re.replace_all(&c[2], "");
            for item in inner.split(',') {
                let item = item.split_whitespace().next().unwrap_or("");
                if !item.is_empty() {
                    add(resolve(m, &format!("{}::{item}", &c[1]), &known));
                }
            }
        }
        graph.insert(m.clone(), deps);
    }
    graph
}

/// Every module that can reach itself, with the path found.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let mut p = path.clone();
                    p.push(start.clone());
                    found.push(p);
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found
}

#[test]
fn no_import_circle_in_the_filter_or_the_mocks() {
    for dir in ["src", "mocks/src"] {
        let graph = import_graph(&root().join(dir));
        assert!(graph.len() > 5, "{dir}: too few modules found: {graph:?}");
        let c = cycles(&graph);
        assert!(c.is_empty(), "{dir}: import circles: {c:?}");
    }
}

#[test]
fn the_cycle_check_finds_a_circle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    let c = cycles(&g);
    assert_eq!(c.len(), 3, "{c:?}");
    assert!(c.contains(&vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}

#[test]
fn proxy_wasm_is_used_only_in_the_adapter() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let adapter = root().join("src/adapter");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&adapter))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("proxy_wasm::"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "proxy_wasm outside src/adapter/: {offenders:?}"
    );
}

#[test]
fn no_source_file_has_more_than_600_lines_of_code_ahead_of_its_tests() {
    let mut files = Vec::new();
    for dir in ["src", "mocks/src", "harness/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut too_long = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let is_test_file = name == "tests.rs"
            || name.ends_with("_tests.rs")
            || f.components().any(|c| c.as_os_str() == "tests");
        if is_test_file {
            continue;
        }
        let code = code_ahead_of_tests(&std::fs::read_to_string(&f).unwrap());
        let n = code.lines().filter(|l| !l.trim().is_empty()).count();
        if n > MAX_CODE_LINES {
            too_long.push(format!("{}: {n}", f.display()));
        }
    }
    assert!(
        too_long.is_empty(),
        "over {MAX_CODE_LINES} code lines: {too_long:?}"
    );
}
