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
