//! The module table in `docs/ARCHITECTURE.md` is the law: this test reads it and every
//! `crate::…` path in `src/` (and `teachcam::…` in `main.rs`), and fails when a module uses one
//! its row does not list, lists one it does not use, or lists one above itself (dependencies
//! point down the table, so there are no cycles). Comments are not code, and test code
//! (`#[cfg(test)]` modules, inline or in their own file) may use any module: it is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The table: module name → (row index, listed dependencies, "everything below").
struct Table {
    rows: Vec<(String, BTreeSet<String>, bool)>,
}

/// Backticked words of a table cell.
fn ticks(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn read_table() -> Table {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in doc.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() == 3 && cells[0] == "module" && cells[2] == "depends on" {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if !line.trim_start().starts_with('|') {
            break;
        }
        if cells[0].starts_with("---") {
            continue;
        }
        let name = ticks(cells[0])
            .first()
            .expect("a module name in backticks")
            .trim_end_matches(".rs")
            .to_string();
        let deps: BTreeSet<String> = ticks(cells[2])
            .iter()
            .map(|d| d.split("::").next().unwrap_or_default().to_string())
            .collect();
        rows.push((name, deps, cells[2].contains("everything below")));
    }
    assert!(
        rows.len() > 10,
        "no module table found in docs/ARCHITECTURE.md"
    );
    Table { rows }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`main` for the binary).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Top-level modules named after `prefix` (`crate::` or `teachcam::`) in `code`, including
/// those in `prefix{a, b::c}` groups.
fn uses(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        // `$crate::` or `other_crate::` are not ours.
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let m = ident(item);
                if !m.is_empty() {
                    out.insert(m);
                }
            }
        } else {
            let m = ident(rest);
            if !m.is_empty() {
                out.insert(m);
            }
        }
    }
    out
}

/// The code of a file without comments (line comments and doc comments) and without its
/// inline test module (by convention the file's last item).
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines[i + 1..]
                    .iter()
                    .find(|l| !l.trim().is_empty())
                    .is_some_and(|l| {
                        l.trim_start().starts_with("mod ") && l.trim_end().ends_with('{')
                    })
        })
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else {
                // A trailing comment; this code base has no "//" inside string literals that
                // name a crate path, so cutting at the first one is enough.
                l.split(" // ").next().unwrap_or(l)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files that are test modules of their own (`#[cfg(test)] mod NAME;` beside them).
fn test_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for w in lines.windows(2) {
            if let ("#[cfg(test)]", Some(name)) = (w[0], w[1].strip_prefix("mod "))
                && let Some(name) = name.strip_suffix(';')
            {
                out.insert(f.with_file_name(format!("{name}.rs")));
            }
        }
    }
    out
}

/// What each module actually uses.
fn actual() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let skip = test_files(&files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files.into_iter().filter(|f| !skip.contains(f)) {
        let m = module_of(&f);
        if m == "lib" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        let prefix = if m == "main" { "teachcam::" } else { "crate::" };
        let mut u = uses(&code, prefix);
        u.remove(&m);
        deps.entry(m).or_default().extend(u);
    }
    deps
}

#[test]
fn the_parser_finds_paths_and_groups_and_skips_comments() {
    let code = code_of(
        "use crate::{a, b::C};\n// use crate::hidden;\nlet x = crate::c::f(); // crate::d\n$crate::e; foo_crate::g;\n#[cfg(test)]\nmod tests {\n    use crate::t;\n}",
    );
    let got: Vec<String> = uses(&code, "crate::").into_iter().collect();
    assert_eq!(got, ["a", "b", "c"]);
}

#[test]
fn every_module_imports_only_what_its_row_lists_and_only_downwards() {
    let table = read_table();
    let actual = actual();
    let position: BTreeMap<&str, usize> = table
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.0.as_str(), i))
        .collect();
    let mut problems = Vec::new();
    for m in actual.keys() {
        if !position.contains_key(m.as_str()) {
            problems.push(format!("module {m} has no row in the table"));
        }
    }
    for (i, (name, listed, everything_below)) in table.rows.iter().enumerate() {
        let Some(used) = actual.get(name) else {
            problems.push(format!("row {name} is not a module of src/"));
            continue;
        };
        for d in used {
            match position.get(d.as_str()) {
                None => problems.push(format!("{name} uses {d}, which has no row")),
                Some(&j) if j <= i => problems.push(format!(
                    "{name} imports upward: {d} is above it in the table"
                )),
                Some(_) if !everything_below && !listed.contains(d) => {
                    problems.push(format!("{name} uses {d}, not listed in its row"))
                }
                Some(_) => {}
            }
        }
        for d in listed.iter().filter(|d| position.contains_key(d.as_str())) {
            if position[d.as_str()] <= i {
                problems.push(format!("{name} lists {d}, which is above it in the table"));
            }
            if !used.contains(d) {
                problems.push(format!("{name} lists {d} but does not use it"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/ARCHITECTURE.md's table does not match the code:\n  {}\nactual uses: {actual:#?}",
        problems.join("\n  ")
    );
}

/// Within one module folder, which file uses which: an edge `a → b` when `a`'s code names
/// its sibling `b` (`super::b`, `crate::module::b`, or in `mod.rs` plain `b::`), or an item
/// `mod.rs` defines (`super::Item`: an edge to `mod`; an item `mod.rs` only re-exports with
/// `pub use b::…` counts as `b`). `mod.rs`'s own `mod b;` and `pub use b::…` lines declare
/// the module's shape and are not uses.
///
/// `mod.rs` is the module's root: Rust makes it contain its children, its children may use
/// what it defines and it wires them together, so edges to and from `mod` are kept in the
/// graph (for reading) but [`circles`] looks only at the circles between sibling files.
fn file_graph(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let module = dir.file_name().unwrap().to_string_lossy().to_string();
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let skip = test_files(&files);
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| f.parent() == Some(dir) && !skip.contains(f))
        .collect();
    let stem = |f: &Path| f.file_stem().unwrap().to_string_lossy().to_string();
    let names: BTreeSet<String> = files.iter().map(|f| stem(f)).collect();
    // Items mod.rs re-exports from a child: name → child.
    let mut reexported: BTreeMap<String, String> = BTreeMap::new();
    let mod_code = code_of(&std::fs::read_to_string(dir.join("mod.rs")).unwrap_or_default());
    for line in mod_code.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((child, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| "{};".contains(c)).split(',') {
            let item = item.trim();
            if !item.is_empty() {
                reexported.insert(item.to_string(), child.to_string());
            }
        }
    }
    let mut graph = BTreeMap::new();
    for f in &files {
        let me = stem(f);
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        let code: String = if me == "mod" {
            code.lines()
                .filter(|l| {
                    let t = l.trim_start();
                    !(t.starts_with("pub use ")
                        || t.starts_with("mod ")
                        || t.starts_with("pub mod "))
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            code
        };
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut named = uses(&code, "super::");
        named.extend(uses(&code, &format!("crate::{module}::")));
        if me == "mod" {
            for n in &names {
                // `n::` at the start of a path (not `other_n::` or `x::n::`).
                let hit = code.match_indices(&format!("{n}::")).any(|(i, _)| {
                    code[..i]
                        .chars()
                        .last()
                        .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
                });
                if hit {
                    used.insert(n.clone());
                }
            }
        }
        for n in named {
            if names.contains(&n) {
                used.insert(n);
            } else if let Some(child) = reexported.get(&n) {
                used.insert(child.clone());
            } else if me != "mod" && n != "super" {
                used.insert("mod".into());
            }
        }
        used.remove(&me);
        graph.insert(me, used);
    }
    graph
}

/// The import circles between the sibling files of `graph` (`mod` left out: see
/// [`file_graph`]), each as a path `a → b → … → a`.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let graph: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .filter(|(n, _)| *n != "mod")
        .map(|(n, e)| {
            (
                n.clone(),
                e.iter().filter(|m| *m != "mod").cloned().collect(),
            )
        })
        .collect();
    let graph = &graph;
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            out.push(c.join(" → "));
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            visit(m, graph, stack, done, out);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, graph, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

#[test]
fn the_circle_finder_finds_circles_between_siblings_not_through_the_root() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(
        m.join("mod.rs"),
        "pub mod a;\npub mod b;\npub use b::Thing;\npub struct Shared;\nfn f() { a::go() }\n",
    )
    .unwrap();
    std::fs::write(m.join("a.rs"), "use super::b::X;\n").unwrap();
    std::fs::write(m.join("b.rs"), "use super::Shared; // mod.rs\n").unwrap();
    let g = file_graph(&m);
    assert_eq!(g["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(g["b"], BTreeSet::from(["mod".to_string()]));
    assert_eq!(g["mod"], BTreeSet::from(["a".to_string()]));
    // Through the root only: not a circle between siblings.
    assert!(circles(&g).is_empty());
    // b using a back (here through an item mod.rs re-exports from a) is one.
    std::fs::write(
        m.join("mod.rs"),
        "pub mod a;\npub mod b;\npub use a::Thing;\n",
    )
    .unwrap();
    std::fs::write(m.join("b.rs"), "fn f(_: super::Thing) {}\n").unwrap();
    let g = file_graph(&m);
    assert_eq!(g["b"], BTreeSet::from(["a".to_string()]));
    assert_eq!(circles(&g), ["a → b → a"]);
}

#[test]
fn no_module_has_an_import_circle_between_its_files() {
    let mut problems = Vec::new();
    for e in std::fs::read_dir(root().join("src")).unwrap() {
        let dir = e.unwrap().path();
        if dir.is_dir() {
            for c in circles(&file_graph(&dir)) {
                problems.push(format!("{}: {c}", dir.display()));
            }
        }
    }
    // And between the top-level modules, which the table orders (checked above).
    assert!(
        problems.is_empty(),
        "import circles (move what both sides need into a module of its own):\n  {}",
        problems.join("\n  ")
    );
}
