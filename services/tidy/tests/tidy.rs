//! The tidy checks over the whole workspace (see the crate's docs for the rules). Each failure
//! names the file or modules and the rule they break.

use std::path::{Path, PathBuf};

use tidy::{
    LONG_FILES, MAX_LINES, cycles, is_test_file, leftover_macros, lines_before_tests,
    module_imports, opens_with_module_doc, rust_files,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every Rust source of the workspace, with its path relative to the root.
fn sources() -> Vec<(String, String)> {
    let root = root();
    let mut out = Vec::new();
    for dir in ["services", "loadtest"] {
        for file in rust_files(&root.join(dir)) {
            let relative = file
                .strip_prefix(&root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            out.push((relative, text));
        }
    }
    assert!(
        out.len() > 50,
        "found only {} sources under {}",
        out.len(),
        root.display()
    );
    out
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| !opens_with_module_doc(text))
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` doc saying what they are for: {missing:#?}"
    );
}

#[test]
fn no_file_is_too_long_before_its_tests() {
    let too_long: Vec<String> = sources()
        .into_iter()
        .filter(|(path, _)| !is_test_file(path))
        .filter(|(path, _)| !LONG_FILES.iter().any(|(long, _)| long == path))
        .filter_map(|(path, text)| {
            let lines = lines_before_tests(&text);
            (lines > MAX_LINES).then(|| format!("{path}: {lines} lines"))
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "these files are longer than {MAX_LINES} lines before their tests; split them by \
         concern: {too_long:#?}"
    );
}

#[test]
fn the_long_file_exceptions_still_exist() {
    for (path, why) in LONG_FILES {
        assert!(
            root().join(path).is_file(),
            "{path} ({why}) is gone: drop the exception"
        );
    }
}

#[test]
fn no_leftover_debugging_macros() {
    let macros = leftover_macros();
    let found: Vec<String> = sources()
        .into_iter()
        .flat_map(|(path, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//"))
                .filter(|(_, line)| macros.iter().any(|m| line.contains(m.as_str())))
                .map(|(n, _)| format!("{path}:{}", n + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        found.is_empty(),
        "dbg!/todo!/unimplemented! left at: {found:#?}"
    );
}

#[test]
fn no_crate_has_an_import_cycle() {
    let root = root();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("services"))
        .map(|dir| dir.flatten().map(|e| e.path().join("src")).collect())
        .unwrap_or_default();
    crates.push(root.join("loadtest/src"));
    let mut found = Vec::new();
    for src in crates.iter().filter(|src| src.is_dir()) {
        let graph = module_imports(src);
        for cycle in cycles(&graph) {
            let name = src.strip_prefix(&root).unwrap_or(src).display();
            found.push(format!("{name}: {}", cycle.join(" <-> ")));
        }
    }
    assert!(
        found.is_empty(),
        "modules that import each other (move what both need into a module below them): \
         {found:#?}"
    );
}

#[test]
fn the_rules_catch_what_they_are_for() {
    assert!(!opens_with_module_doc("use std::fmt;\n"));
    assert!(opens_with_module_doc("\n//! Docs.\nuse std::fmt;\n"));
    assert_eq!(lines_before_tests("a\nb\n#[cfg(test)]\nmod tests {}\n"), 2);
    assert!(is_test_file("services/x/tests/it/harness.rs"));
    assert!(is_test_file("services/x/src/pan_tests.rs"));
    assert!(!is_test_file("services/x/src/pan.rs"));
    let graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .fold(std::collections::BTreeMap::new(), |mut g, (from, to)| {
            g.entry(from.to_owned())
                .or_insert_with(std::collections::BTreeSet::new)
                .insert(to.to_owned());
            g.entry(to.to_owned()).or_default();
            g
        });
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
}
