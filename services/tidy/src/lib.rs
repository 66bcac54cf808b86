//! Checks of the workspace's shape, run as tests (`tests/tidy.rs`) by `cargo test --workspace`,
//! like rust-analyzer's tidy: every Rust file opens with a `//!` doc, no file is longer than
//! [`MAX_LINES`] before its test module (two named exceptions), no crate's modules import each
//! other in a cycle, and no `dbg!`, `todo!` or `unimplemented!` is left behind. This library
//! holds the rules; the test walks the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines a source file may have before its `#[cfg(test)]` module.
pub const MAX_LINES: usize = 700;

/// Files allowed past [`MAX_LINES`], and why.
pub const LONG_FILES: [(&str, &str); 1] = [(
    "services/vault-audit/src/verify.rs",
    "the verifier: one algorithm that reads best whole",
)];

/// Every `.rs` file under `dir`, skipping build output and hidden directories.
#[must_use]
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// True if `text` opens with an inner doc comment (after blank lines).
#[must_use]
pub fn opens_with_module_doc(text: &str) -> bool {
    text.lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| line.starts_with("//!"))
}

/// The lines before the first `#[cfg(test)]` line (all of them if there is none).
#[must_use]
pub fn lines_before_tests(text: &str) -> usize {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .count()
}

/// True for test code, which the size rule does not cover: files under a `tests` directory
/// and `*_tests.rs` files.
#[must_use]
pub fn is_test_file(relative: &str) -> bool {
    relative.split('/').any(|part| part == "tests") || relative.ends_with("_tests.rs")
}

/// The debugging macros no source may keep, spelled so this file does not hold them.
#[must_use]
pub fn leftover_macros() -> [String; 3] {
    ["dbg", "todo", "unimplemented"].map(|name| format!("{name}!("))
}

/// The modules of one crate and the modules each names through `crate::`, from the code
/// before each file's test module (comments skipped). A module is a file or directory
/// directly under `src/`; its submodules count as itself.
#[must_use]
pub fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let Ok(relative) = file.strip_prefix(src) else {
            continue;
        };
        let Some(first) = relative.components().next() else {
            continue;
        };
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if ["lib", "main", "tests", "bin"].contains(&module.as_str()) || module.ends_with("_tests")
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let names = graph.entry(module.clone()).or_default();
        for line in text.lines().take(lines_before_tests(&text)) {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (at, _) in code.match_indices("crate::") {
                let rest = code.get(at + "crate::".len()..).unwrap_or_default();
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let preceded_by_dollar = at > 0 && code.get(at - 1..at) == Some("$");
                if !name.is_empty() && name != module && !preceded_by_dollar {
                    names.insert(name);
                }
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for names in graph.values_mut() {
        names.retain(|name| modules.contains(name));
    }
    graph
}

/// The import cycles of `graph`: each a list of modules that reach one another.
#[must_use]
pub fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(module) = stack.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> = graph
        .keys()
        .map(|module| (module, reaches(module)))
        .collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    for (module, reached) in &reach {
        if !reached.contains(*module) {
            continue;
        }
        let mut cycle: Vec<String> = reached
            .iter()
            .filter(|other| reach.get(other).is_some_and(|r| r.contains(*module)))
            .cloned()
            .collect();
        cycle.sort();
        if !found.contains(&cycle) {
            found.push(cycle);
        }
    }
    found
}
