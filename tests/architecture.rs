//! The layout's rules (docs/ARCHITECTURE.md), checked on the source: which layer may import
//! which, that only `src/edge/` and `src/cli/` see Pingora, and the size limits that keep files
//! and functions readable.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file under `src/`, as (path relative to `src/`, text).
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The code lines of a file: comments and `#[cfg(test)]` modules left out.
fn code_lines(text: &str) -> Vec<&str> {
    let end = text.find("\n#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// The top-level modules of pkb-edge a file names through `crate::`.
fn crate_imports(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in code_lines(text) {
        for (i, _) in line.match_indices("crate::") {
            let before = line[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = line[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

fn layer(path: &str) -> &str {
    path.split(['/', '.']).next().unwrap_or(path)
}

#[test]
fn only_the_edge_and_the_cli_see_pingora() {
    let mut offenders = Vec::new();
    for (path, text) in sources() {
        if path.starts_with("edge/") || path.starts_with("cli/") {
            continue;
        }
        if code_lines(&text)
            .iter()
            .any(|l| l.contains("pingora::") || l.contains("pingora_") || l.contains("use pingora"))
        {
            offenders.push(path);
        }
    }
    assert!(
        offenders.is_empty(),
        "import pingora outside src/edge and src/cli: {offenders:?}"
    );
    // The check sees an import where there is one.
    let edge = sources();
    assert!(edge
        .iter()
        .any(|(p, t)| p == "edge/proxy.rs"
            && code_lines(t).iter().any(|l| l.contains("use pingora"))));
}

#[test]
fn dependencies_point_inward() {
    let allowed: &[(&str, &[&str])] = &[
        ("core", &["core"]),
        ("config", &["config", "core"]),
        ("observe", &["observe", "config", "core"]),
        ("store", &["store", "config", "core", "observe"]),
        ("pkb", &["pkb", "config", "core", "observe"]),
        ("pages", &["pages", "core"]),
        (
            "tokens",
            &["tokens", "store", "pkb", "config", "core", "observe"],
        ),
        (
            "launch",
            &[
                "launch", "tokens", "store", "pkb", "config", "core", "observe",
            ],
        ),
        (
            "pairing",
            &["pairing", "store", "pkb", "config", "core", "observe"],
        ),
        (
            "decorate",
            &[
                "decorate", "tokens", "store", "pkb", "config", "core", "observe",
            ],
        ),
        (
            "nhs_login",
            &["nhs_login", "store", "config", "core", "observe"],
        ),
        (
            "identity",
            &["identity", "nhs_login", "config", "core", "observe"],
        ),
    ];
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, text) in sources() {
        let Some((_, may)) = allowed.iter().find(|(l, _)| *l == layer(&path)) else {
            continue;
        };
        if path.ends_with("/tests.rs") {
            continue; // a test module may use whatever it tests with
        }
        checked += 1;
        for name in crate_imports(&text) {
            if !may.contains(&name.as_str()) {
                problems.push(format!("src/{path} imports crate::{name}"));
            }
        }
    }
    assert!(checked > 40, "only {checked} files checked");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn files_and_functions_stay_readable() {
    let mut problems = Vec::new();
    for (path, text) in sources() {
        let exempt_file = path.starts_with("sim/") || path.ends_with("tests.rs");
        let code = code_lines(&text);
        if !exempt_file && text.lines().count() > 600 {
            // Test modules at the end do not count.
            let before_tests = text.find("\n#[cfg(test)]").map_or(text.len(), |i| i);
            let lines = text[..before_tests].lines().count();
            if lines > 600 {
                problems.push(format!("src/{path} has {lines} lines (at most 600)"));
            }
        }
        if path.ends_with("tests.rs") {
            continue;
        }
        for (n, line) in code.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(super) fn ",
                "pub(crate) fn ",
                "pub(super) async fn ",
                "pub(crate) async fn ",
                "const fn ",
                "pub const fn ",
            ]
            .iter()
            .any(|p| trimmed.starts_with(p));
            if !is_fn {
                continue;
            }
            let indent = &line[..line.len() - trimmed.len()];
            // A signature that ends in `;` is a declaration (a trait method without a body).
            let opens = code[n..]
                .iter()
                .find(|l| l.trim_end().ends_with('{') || l.trim_end().ends_with(';'));
            if opens.is_none_or(|l| l.trim_end().ends_with(';')) {
                continue;
            }
            let closing = format!("{indent}}}");
            if let Some(len) = code[n + 1..].iter().position(|l| *l == closing) {
                if len + 2 > 80 {
                    problems.push(format!(
                        "src/{path}:{}: a function of {} lines (at most 80)",
                        n + 1,
                        len + 2
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
