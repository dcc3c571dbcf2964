//! The proxy's modules are layers (see the crate docs in `src/lib.rs`): each may use only the
//! layers below it. This reads every source file and fails on a path that points upwards, so
//! that a cycle cannot creep back in unnoticed. Test modules are not checked: a layer's tests
//! may assemble what is above it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Bottom to top. `lib` and `main` are the crate roots and may use everything.
const LAYERS: &[&str] = &["core", "transport", "balance", "state", "svc", "servers", "control", "app"];

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The layer of a source file: its top-level folder or file under `src/`.
fn layer_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its test module: a `#[cfg(test)] mod tests;` declaration is
/// skipped, an inline `#[cfg(test)] mod tests { .. }` ends the code (by convention the last
/// item); files that are test modules themselves (`tests.rs`) have none.
fn non_test_code(file: &Path) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    non_test_lines(&std::fs::read_to_string(file).unwrap())
}

fn non_test_lines(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            match lines.next() {
                Some(item) if item.trim_end().ends_with(';') => continue,
                _ => break,
            }
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Every `crate::<module>` a piece of code names, with its line.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut paths = Vec::new();
    for (number, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let module: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            paths.push((number + 1, module));
        }
    }
    paths
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut upwards = Vec::new();
    for file in &files {
        let layer = layer_of(&src, file);
        if layer == "lib" || layer == "main" {
            continue;
        }
        let own = LAYERS
            .iter()
            .position(|l| *l == layer)
            .unwrap_or_else(|| panic!("{} is in no layer: add its folder to LAYERS and lib.rs", file.display()));
        for (line, module) in crate_paths(&non_test_code(file)) {
            if let Some(used) = LAYERS.iter().position(|l| *l == module) {
                if used > own {
                    upwards.push(format!("{}:{line}: {layer} uses {module}", file.display()));
                }
            }
        }
    }
    assert!(upwards.is_empty(), "paths that point up a layer:\n{}", upwards.join("\n"));
}

/// Every (layer, layer it uses) pair of the code.
fn layer_edges(src: &Path, files: &[PathBuf]) -> std::collections::BTreeSet<(String, String)> {
    let mut edges = std::collections::BTreeSet::new();
    for file in files {
        let layer = layer_of(src, file);
        if layer == "lib" || layer == "main" {
            continue;
        }
        for (_, module) in crate_paths(&non_test_code(file)) {
            if module != layer && LAYERS.contains(&module.as_str()) {
                edges.insert((layer.clone(), module));
            }
        }
    }
    edges
}

#[test]
fn the_layer_diagram_in_docs_is_the_one_the_code_draws() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let drawn = layer_edges(&src, &files);
    let doc_path = root.join("../docs/proxy-layers.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    // The first mermaid block: `from --> to` lines.
    let block = doc.split("```mermaid").nth(1).and_then(|rest| rest.split("```").next()).unwrap_or_default();
    let documented: std::collections::BTreeSet<(String, String)> = block
        .lines()
        .filter_map(|line| line.trim().split_once(" --> "))
        .map(|(from, to)| (from.to_string(), to.to_string()))
        .collect();
    let mut expected: Vec<_> = drawn.iter().collect();
    expected.sort_by_key(|(from, to)| {
        let at = |l: &str| LAYERS.iter().position(|x| *x == l).unwrap_or(0);
        (std::cmp::Reverse(at(from)), std::cmp::Reverse(at(to)))
    });
    let lines: Vec<String> = expected.iter().map(|(from, to)| format!("    {from} --> {to}")).collect();
    assert_eq!(
        documented,
        drawn,
        "{} is out of date; its first diagram should read:\n{}",
        doc_path.display(),
        lines.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_path() {
    // The check itself, on a line it must catch and one it must let through.
    assert_eq!(
        crate_paths("use crate::svc::errors::ProxyError; // and crate::core"),
        [(1, "svc".to_string()), (1, "core".to_string())]
    );
    assert!(crate_paths("use nodus_config::ConfigSnapshot;").is_empty());
    // A test module declared at the top does not hide the code after it.
    let code = non_test_lines(
        "#[cfg(test)]\nmod tests;\nuse crate::app;\n#[cfg(test)]\nmod inline {\n    use crate::svc;\n}\n",
    );
    assert_eq!(crate_paths(&code), [(1, "app".to_string())]);
}
