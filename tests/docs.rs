//! The documentation holds together, and a build installs only what it needs.
//!
//! - Every relative link in `README.md` and `docs/*.md` (`[text](path)`, `[text](path#anchor)`,
//!   images included) names a file that exists, and an anchor names a heading of the target as
//!   GitHub makes its anchors (lower case, spaces to `-`, punctuation other than `-` and `_`
//!   dropped, `-1`, `-2` … for repeated headings). Links inside code are not links.
//! - README stays a page a newcomer reads: its first lines give `make demo` and `make test`,
//!   it is under 250 lines, and it links every page in `docs/`.
//! - `make demo` and `make build` install no test service (browser, broker): the Debian
//!   packages of every `cross/cross.sh` step their recipes run are checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files the checks cover: README.md and docs/*.md.
fn markdown_files() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// `text` without fenced code blocks (their lines become empty, so line numbers stay).
fn without_fences(text: &str) -> Vec<String> {
    let mut fenced = false;
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return String::new();
            }
            if fenced { String::new() } else { l.to_string() }
        })
        .collect()
}

/// `line` with inline code spans removed.
fn without_code_spans(line: &str) -> String {
    // Even pieces are prose, odd pieces code (an unclosed tick leaves the rest as code).
    line.split('`').step_by(2).collect()
}

/// The targets of inline links and images on one line: what stands between `](` and `)`,
/// without an optional title or angle brackets.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let end = rest.find(')').unwrap_or(rest.len());
        let inner = rest[..end].trim();
        let target = inner
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_start_matches('<')
            .trim_end_matches('>');
        if !target.is_empty() {
            out.push(target.to_string());
        }
        rest = &rest[end..];
    }
    out
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    // A link in a heading contributes its text.
    let mut text = String::new();
    let mut rest = heading.trim();
    while let Some(i) = rest.find('[') {
        text.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(close) = rest.find("](")
            && let Some(end) = rest[close..].find(')')
        {
            text.push_str(&rest[..close]);
            rest = &rest[close + end + 1..];
        } else {
            text.push('[');
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown file offers.
fn anchors(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in without_fences(&text) {
        let t = line.trim_start();
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !t[hashes..].starts_with([' ', '\t']) {
            continue;
        }
        let s = slug(t[hashes..].trim().trim_end_matches('#').trim());
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 {
            s.clone()
        } else {
            format!("{s}-{n}")
        });
        *n += 1;
    }
    out
}

/// Broken relative links in `file`, as "file:line: target: why".
fn broken_links(file: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut checked = 0;
    let mut bad = Vec::new();
    for (n, line) in without_fences(&text).iter().enumerate() {
        for target in link_targets(&without_code_spans(line)) {
            let scheme = target.split_once(':').is_some_and(|(s, _)| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            });
            if scheme {
                continue;
            }
            checked += 1;
            let (path, frag) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.to_path_buf()
            } else {
                file.parent().unwrap().join(path)
            };
            let here = format!("{}:{}: {target}", file.display(), n + 1);
            if !dest.exists() {
                bad.push(format!("{here}: no such file"));
            } else if !frag.is_empty() {
                if dest.extension().is_none_or(|x| x != "md") {
                    bad.push(format!("{here}: an anchor on a file that is not Markdown"));
                } else if !anchors(&dest).contains(frag) {
                    bad.push(format!("{here}: no heading #{frag} in {}", dest.display()));
                }
            }
        }
    }
    (checked, bad)
}

#[test]
fn the_checker_finds_missing_files_and_anchors_and_skips_code() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("b.md"),
        "# Kernel choice per CPU (x86)\n## Repeated\n## Repeated\n```\n# not a heading\n```\n",
    )
    .unwrap();
    let a = d.path().join("a.md");
    std::fs::write(
        &a,
        "[ok](b.md#kernel-choice-per-cpu-x86) [ok2](b.md#repeated-1) ![img](missing.png)\n\
         [gone](nowhere.md) [anchor](b.md#not-a-heading) `[code](nowhere.md)`\n\
         [web](https://example.com/x) [self](#none)\n```\n[fenced](nowhere.md)\n```\n",
    )
    .unwrap();
    let (checked, bad) = broken_links(&a);
    assert_eq!(checked, 6, "{bad:?}");
    let whys: Vec<&str> = bad.iter().map(|b| b.rsplit(": ").next().unwrap()).collect();
    assert_eq!(bad.len(), 4, "{bad:?}");
    assert!(
        bad[0].contains("missing.png") && whys[0] == "no such file",
        "{bad:?}"
    );
    assert!(
        bad[1].contains("nowhere.md") && bad[1].contains(":2:"),
        "{bad:?}"
    );
    assert!(bad[2].contains("#not-a-heading"), "{bad:?}");
    assert!(bad[3].contains("#none"), "{bad:?}");
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let mut checked = 0;
    let mut bad = Vec::new();
    for f in markdown_files() {
        let (n, b) = broken_links(&f);
        checked += n;
        bad.extend(b);
    }
    assert!(
        checked > 30,
        "only {checked} links found: is the parser broken?"
    );
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn the_readme_is_short_starts_with_the_two_commands_and_links_every_page() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    assert!(
        lines.len() < 250,
        "README.md has {} lines (keep it under 250; move detail to docs/)",
        lines.len()
    );
    let top = lines[..lines.len().min(20)].join("\n");
    assert!(
        top.contains("make demo") && top.contains("make test"),
        "README's first lines must give `make demo` and `make test`"
    );
    for f in markdown_files().iter().skip(1) {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("docs/{name}")),
            "README.md does not link docs/{name}"
        );
    }
}

/// The Debian packages the recipes of `target` install, read from `make -n` and
/// `cross/cross.sh packages`.
fn packages_of(target: &str) -> BTreeSet<String> {
    let out = Command::new("make")
        .args(["-n", "-B", target])
        .current_dir(root())
        .output()
        .expect("make");
    assert!(
        out.status.success(),
        "make -n {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    let mut steps = BTreeSet::new();
    for line in script.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w.ends_with("cross/cross.sh")
                && let Some(step) = words.next()
            {
                steps.insert(step.to_string());
            }
        }
        assert!(
            !line.contains("apt-get"),
            "{target} runs apt-get directly: {line}"
        );
    }
    let mut pkgs = BTreeSet::new();
    for step in &steps {
        let out = Command::new("cross/cross.sh")
            .args(["packages", step])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(out.status.success());
        pkgs.extend(
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .map(String::from),
        );
    }
    pkgs
}

#[test]
fn a_build_or_the_demo_installs_no_browser_or_broker_and_the_tests_do() {
    for target in ["demo", "build"] {
        let p = packages_of(target);
        assert!(
            p.contains("libclang-dev"),
            "{target} no longer installs libclang-dev: {p:?}"
        );
        for test_only in [
            "chromium",
            "chromium-driver",
            "mosquitto",
            "mosquitto-clients",
        ] {
            assert!(!p.contains(test_only), "make {target} installs {test_only}");
        }
    }
    let t = packages_of("test");
    for needed in [
        "chromium",
        "chromium-driver",
        "mosquitto",
        "mosquitto-clients",
        "qemu-user",
    ] {
        assert!(
            t.contains(needed),
            "make test does not install {needed}: {t:?}"
        );
    }
}
