//! The library's layering, as its source says it: storage knows no HTTP, the key logic
//! knows no web framework, and no two top-level modules import each other, directly or
//! through others (ARCHITECTURE.md, "Layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`store` for `src/store/jobs.rs`).
fn module_of(file: &Path) -> String {
    let relative = file.strip_prefix(src()).expect("under src");
    let first = relative.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules a file names as `crate::<module>` or in a group
/// `crate::{<module>, <module>::…}`.
fn imports(text: &str) -> BTreeSet<String> {
    let name = |rest: &str| -> String { rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut modules = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        if text[..at].ends_with("hodei_api::") || text[..at].ends_with('_') {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the group's top level: `{a, b::{c, d}}` names a and b.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        modules.insert(name(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            modules.insert(name(rest));
        }
    }
    modules.remove("");
    modules.remove("self");
    modules
}

#[test]
fn grouped_imports_are_seen() {
    let found = imports("use crate::{serve, store::{jobs, queues}};\nuse crate::http::AppState;");
    assert_eq!(found, BTreeSet::from(["http".to_owned(), "serve".to_owned(), "store".to_owned()]));
}

#[test]
fn storage_has_no_http_or_web_framework_in_it() {
    for file in sources(&src().join("store")) {
        let text = std::fs::read_to_string(&file).expect("read");
        for word in ["utoipa", "axum", "crate::http", "crate::error", "crate::serve"] {
            assert!(!text.contains(word), "{} mentions {word}", file.display());
        }
    }
}

#[test]
fn keys_and_principals_know_no_web_framework() {
    let text = std::fs::read_to_string(src().join("auth.rs")).expect("read auth.rs");
    for word in ["axum", "crate::http", "crate::store", "utoipa"] {
        assert!(!text.contains(word), "auth.rs mentions {word}");
    }
}

#[test]
fn no_two_modules_import_each_other() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src()) {
        let module = module_of(&file);
        if ["lib", "main"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        let uses: Vec<String> = imports(&text).into_iter().filter(|m| *m != module).collect();
        graph.entry(module).or_default().extend(uses);
    }
    // Depth-first search for a path back to where it started.
    fn cycle_from(
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let here = path.last().expect("a path").clone();
        for next in graph.get(&here).into_iter().flatten() {
            if let Some(start) = path.iter().position(|m| m == next) {
                let mut cycle = path[start..].to_vec();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if done.contains(next) {
                continue;
            }
            path.push(next.clone());
            if let Some(cycle) = cycle_from(graph, path, done) {
                return Some(cycle);
            }
            path.pop();
        }
        done.insert(here);
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, &mut vec![module.clone()], &mut done) {
            panic!("modules import each other: {}", cycle.join(" -> "));
        }
    }
    // The check sees the imports it is about.
    assert!(graph["http"].contains("store"), "{graph:?}");
}
