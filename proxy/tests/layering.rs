//! The proxy's modules are layers (see the crate docs in `src/lib.rs`): each may use only the
//! layers below it. This reads every source file and fails on a path that points upwards, so
//! that a cycle cannot creep back in unnoticed. Test modules are not checked: a layer's tests
//! may assemble what is above it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Bottom to top. `lib` and `main` are the crate roots and may use everything.
const LAYERS: &[&str] = &["core", "transport", "balance", "policy", "state", "svc", "servers", "control", "app"];

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

/// The code of a file without its `#[cfg(test)]` module (by convention the last item) and
/// without files that are test modules themselves (`tests.rs`).
fn non_test_code(file: &Path) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(file).unwrap();
    text.split("#[cfg(test)]").next().unwrap_or_default().to_string()
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

#[test]
fn the_check_sees_an_upward_path() {
    // The check itself, on a line it must catch and one it must let through.
    assert_eq!(
        crate_paths("use crate::svc::errors::ProxyError; // and crate::core"),
        [(1, "svc".to_string()), (1, "core".to_string())]
    );
    assert!(crate_paths("use nodus_config::ConfigSnapshot;").is_empty());
}
