//! The documentation checks: every `ferry` command written in the README and in `docs/` must
//! be one the current command line accepts, every command must be documented in docs/cli.md,
//! and the README's tour (its `sh run` block) is run as written, in a fresh folder, and must
//! succeed. Commands that need AWS, BigQuery or MySQL are parsed here and run by the tests of
//! those parts (moto, bqemulator, MariaDB).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};

use ferry_tests::{TempDir, repo_root};

/// The documentation files.
fn docs() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    files.extend(more);
    files
}

/// A command in a document: where, the info string of its block, and its words.
struct Written {
    at: String,
    block: String,
    words: Vec<String>,
}

/// Splits a shell line into words: quotes ('…', "…" with \" and \\), backslash escapes, and a
/// `#` comment outside quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                has = true;
                for d in chars.by_ref() {
                    if d == '\'' {
                        break;
                    }
                    cur.push(d);
                }
            }
            '"' => {
                has = true;
                while let Some(d) = chars.next() {
                    match d {
                        '"' => break,
                        '\\' => {
                            if let Some(e) = chars.next() {
                                cur.push(e);
                            }
                        }
                        d => cur.push(d),
                    }
                }
            }
            '\\' => {
                if let Some(e) = chars.next() {
                    cur.push(e);
                    has = true;
                }
            }
            '#' if !has && cur.is_empty() => break,
            c if c.is_whitespace() => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Every `ferry …` line (also `cargo run [-p ferry-cli] -- …`) in the `sh` blocks of `path`.
fn written(path: &Path) -> Vec<Written> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    let mut pending = String::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(info) = line.trim_start().strip_prefix("```") {
            block = match block {
                Some(_) => None,
                None => Some(info.trim().to_owned()),
            };
            continue;
        }
        let Some(info) = &block else { continue };
        if !info.starts_with("sh") {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        let full = format!("{pending}{line}");
        pending.clear();
        let mut w = words(&full);
        // Environment assignments before the command.
        while w
            .first()
            .is_some_and(|x| x.contains('=') && !x.starts_with('-'))
        {
            w.remove(0);
        }
        let start = match w.first().map(String::as_str) {
            Some("ferry") => 1,
            Some("cargo") => match w.iter().position(|x| x == "--") {
                Some(i) if w.iter().any(|x| x == "run") => i + 1,
                _ => continue,
            },
            _ => continue,
        };
        out.push(Written {
            at: format!("{name}:{}", i + 1),
            block: info.clone(),
            words: w[start..].to_vec(),
        });
    }
    out
}

#[test]
fn every_documented_command_parses() {
    let mut checked = 0;
    let mut bad = Vec::new();
    for file in docs() {
        for w in written(&file) {
            checked += 1;
            let argv = std::iter::once("ferry".to_owned()).chain(w.words.iter().cloned());
            if let Err(e) = ferry_cli::check_args(argv) {
                bad.push(format!("{}: ferry {}\n{e}", w.at, w.words.join(" ")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {checked} commands do not parse:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(checked >= 40, "the docs hold {checked} commands");
}

#[test]
fn every_command_is_documented_in_the_cli_page() {
    let cli = std::fs::read_to_string(repo_root().join("docs/cli.md")).unwrap();
    let missing: Vec<String> = ferry_cli::command_paths()
        .into_iter()
        .filter(|p| !cli.contains(&format!("ferry {p}")))
        .collect();
    assert!(missing.is_empty(), "not in docs/cli.md: {missing:?}");
}

#[test]
fn the_readme_tour_runs_as_written() {
    let dir = TempDir::new("docs-tour");
    std::os::unix::fs::symlink(repo_root().join("mappings"), dir.path().join("mappings")).unwrap();
    let tour: Vec<Written> = written(&repo_root().join("README.md"))
        .into_iter()
        .filter(|w| w.block == "sh run")
        .collect();
    assert!(tour.len() >= 4, "the README's tour is a `sh run` block");
    for w in &tour {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-under-test"))
            .args(&w.words)
            .current_dir(dir.path())
            .env_remove("FERRY_MAPPINGS")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: ferry {} exited {:?}\n{}{}",
            w.at,
            w.words.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        dir.path().join("tour/status.html").is_file(),
        "the demo wrote its page"
    );
}

#[test]
fn shell_words_split_like_a_shell() {
    assert_eq!(
        words(r#"ferry local query --warehouse w "SELECT \"a\" FROM t" # why"#),
        [
            "ferry",
            "local",
            "query",
            "--warehouse",
            "w",
            "SELECT \"a\" FROM t"
        ]
    );
    assert_eq!(words("a 'b c' d\\ e"), ["a", "b c", "d e"]);
    assert_eq!(words("# only a comment"), Vec::<String>::new());
}
