//! Documentation that must not drift from the code: the README's test command is the one
//! CI runs, every profile key is documented in the reference and both shipped profiles,
//! and every Rust file opens with a module doc.

use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// The command lines in fenced code blocks of the README's "Set up" section.
fn setup_commands(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Set up"))
        .expect("README has a `## Set up` section");
    let mut commands = Vec::new();
    let mut in_code = false;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code && !line.trim().is_empty() && !line.trim().starts_with('#') {
            commands.push(line.trim().to_owned());
        }
    }
    commands
}

#[test]
fn readme_has_two_setup_commands_and_ci_runs_the_test_one() {
    let commands = setup_commands(&read("README.md"));
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(
        commands[0].contains("serve --config config/quickstart.yaml"),
        "{commands:?}"
    );
    let test_command = &commands[1];
    let ci = read(".ci/run");
    assert!(
        ci.lines()
            .any(|l| !l.trim_start().starts_with('#')
                && l.trim_end().ends_with(test_command.as_str())),
        ".ci/run does not run the README's test command `{test_command}`"
    );
}

/// Field names of the `Raw*` structs in `src/config/raw.rs` and the section files beside
/// it (`policy.rs`, …): every key a profile may hold.
fn profile_keys() -> Vec<String> {
    let raw = ["src/config/raw.rs", "src/config/policy.rs"]
        .iter()
        .map(|f| read(f))
        .collect::<Vec<_>>()
        .join("\n");
    let mut keys = Vec::new();
    let mut in_struct = false;
    for line in raw.lines() {
        let line = line.trim();
        if line.starts_with("pub struct Raw") && line.ends_with('{') {
            in_struct = true;
        } else if line == "}" {
            in_struct = false;
        } else if in_struct
            && let Some(rest) = line.strip_prefix("pub ")
            && let Some((name, _)) = rest.split_once(':')
        {
            keys.push(name.trim().trim_start_matches("r#").to_owned());
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Whether `word` occurs in `text` not as part of a longer identifier.
fn mentions(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn every_profile_key_is_documented() {
    let keys = profile_keys();
    assert!(keys.len() > 20, "parsing raw.rs found only {keys:?}");
    for file in [
        "docs/configuration.md",
        "config/quickstart.yaml",
        "config/production.yaml",
    ] {
        let text = read(file);
        let missing: Vec<&String> = keys
            .iter()
            .filter(|key| {
                if file.ends_with(".yaml") {
                    !mentions(&text, &format!("{key}:"))
                } else {
                    !mentions(&text, key)
                }
            })
            .collect();
        assert!(missing.is_empty(), "{file} does not document {missing:?}");
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = vec![repo().join("build.rs")];
    for dir in ["src", "actors/src", "tests"] {
        rust_files(&repo().join(dir), &mut files);
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text
                .lines()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("//!"))
        })
        .map(|p| p.strip_prefix(repo()).unwrap_or(p).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:?}"
    );
}
