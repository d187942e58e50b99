//! The shape of the house, checked: the top-level modules of `src/` form
//! the layers `docs/architecture.md` lists ("Layers"), and a module uses
//! only modules of the layers below its own (so no two modules import each
//! other, directly or around a circle). Files stay readable in one sitting.
//!
//! It reads the sources as text: `crate::name` paths (in `use` lines, in
//! braces, and inline) and `super::` paths that climb to the crate root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Longest a source file may grow (generated code aside).
const MAX_FILE_LINES: usize = 600;
/// The connection task must stay readable top to bottom.
const MAX_CONN_TASK_LINES: usize = 400;

/// The layers, bottom first, from the architecture document: each line of
/// its "Layers" list that starts with a number names its modules in
/// backticks before a colon (what follows the colon is prose).
fn documented_layers() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/architecture.md")).unwrap();
    let section = doc.split("\n## Layers").nth(1).expect("docs/architecture.md has a \"## Layers\" section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.split(':').next().unwrap().split('`').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>())
        .filter(|names| !names.is_empty())
        .collect()
}

/// The crate's top-level modules, from `src/lib.rs`.
fn top_level_modules() -> Vec<String> {
    let lib = std::fs::read_to_string(format!("{ROOT}/src/lib.rs")).unwrap();
    lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';').map(str::to_string)).collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "generated") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path below the crate root (`src/conn/peer.rs` ->
/// ["conn", "peer"]; `src/conn/mod.rs` -> ["conn"]).
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(format!("{ROOT}/src")).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Removes `//` comments (doc comments name modules in prose and links).
fn code_only(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `code` (of the module at `path`) refers to, with
/// the line of each reference.
fn references(code: &str, path: &[String]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // `crate::{a, b::c, d::{e, f}}`: the first name of each item at depth one.
                let mut depth = 1;
                let mut item_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        ',' if depth == 1 => item_start = true,
                        c if item_start && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                            found.push((ident_at(&group[i..]).to_string(), n + 1));
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                found.push((ident_at(after).to_string(), n + 1));
            }
            rest = after;
        }
        // `super::` paths that climb out of the top-level module.
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            let before = &rest[..at];
            let preceded_by_path = before.ends_with("::") || before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            let mut after = &rest[at..];
            let mut climbs = 0;
            while let Some(next) = after.strip_prefix("super::") {
                climbs += 1;
                after = next;
            }
            if !preceded_by_path && climbs >= path.len() {
                found.push((ident_at(after).to_string(), n + 1));
            }
            rest = after;
        }
    }
    found
}

#[test]
fn modules_use_only_the_layers_below_their_own() {
    let layers = documented_layers();
    let layer_of: BTreeMap<String, usize> = layers.iter().enumerate().flat_map(|(i, names)| names.iter().map(move |n| (n.clone(), i))).collect();
    let modules = top_level_modules();
    for m in &modules {
        assert!(layer_of.contains_key(m), "module `{m}` is not in the layer list of docs/architecture.md (## Layers): place it there");
    }
    for name in layer_of.keys() {
        assert!(modules.contains(name), "docs/architecture.md lists `{name}`, which src/lib.rs does not declare");
    }
    let mut files = Vec::new();
    rust_files(Path::new(&format!("{ROOT}/src")), &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let path = module_path(file);
        let Some(top) = path.first().filter(|t| layer_of.contains_key(*t)) else { continue };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (used, line) in references(&code, &path) {
            if &used == top || !layer_of.contains_key(&used) {
                continue;
            }
            if layer_of[&used] >= layer_of[top] {
                let rel = file.strip_prefix(ROOT).unwrap().display();
                violations.push(format!("{rel}:{line}: `{top}` (layer {}) uses `{used}` (layer {})", layer_of[top] + 1, layer_of[&used] + 1));
            }
        }
    }
    assert!(violations.is_empty(), "imports that do not look down ({}):\n{}", violations.len(), violations.join("\n"));
}

#[test]
fn source_files_stay_readable_in_one_sitting() {
    let mut files = Vec::new();
    rust_files(Path::new(&format!("{ROOT}/src")), &mut files);
    let mut long: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_FILE_LINES)
        .map(|(f, n)| format!("{} ({n} lines)", f.strip_prefix(ROOT).unwrap().display()))
        .collect();
    long.sort();
    assert!(long.is_empty(), "files over {MAX_FILE_LINES} lines: {long:?}");
    let conn = std::fs::read_to_string(format!("{ROOT}/src/conn/mod.rs")).unwrap().lines().count();
    assert!(conn < MAX_CONN_TASK_LINES, "src/conn/mod.rs is {conn} lines: the connection task keeps under {MAX_CONN_TASK_LINES}");
}

#[test]
fn the_reference_reader_sees_every_form() {
    let code = "use crate::{clock::Stamp, bus::{A, B}, ids};\nlet x = crate::metrics::render();\nuse super::super::shard::Shard;\nuse super::Local;";
    let path = ["conn".to_string(), "requests".to_string()];
    let names: Vec<String> = references(code, &path).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["clock", "bus", "ids", "metrics", "shard"]);
}
