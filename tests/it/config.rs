//! The profile on the command line: `warden config check` reports every problem with the
//! file, line, column and key path and exits non-zero; the profiles shipped in
//! `config/` pass it; `warden serve` refuses a bad profile before touching anything.

use std::path::{Path, PathBuf};

use crate::support::dirs;
use crate::support::warden::{Output, command, run};

/// Runs `warden config check` on `text` written to a file; returns the file's path (as
/// the error messages print it) and what the command printed.
fn check(text: &str, env: &[(&str, &str)]) -> (String, Output) {
    let dir = dirs::temp_dir("config");
    let path = dir.path().join("profile.yaml");
    std::fs::write(&path, text).expect("write the profile");
    let output = check_file(&path, env);
    (path.display().to_string(), output)
}

fn check_file(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = command(&["config", "check"]);
    command.arg(path);
    for (name, value) in env {
        command.env(name, value);
    }
    run(command)
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

const GOOD: &str = "\
server:
  listen: 127.0.0.1:9000
  shutdown_grace: 5s
database:
  url: postgresql://warden@localhost/warden
logging:
  format: json
servers:
  github:
    command: github-mcp-server
    args: [stdio]
    restart:
      max_restarts: 3
";

#[test]
fn config_check_accepts_a_good_profile() {
    let (_, output) = check(GOOD, &[]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        output
            .stdout
            .contains(": ok (1 server, listening on 127.0.0.1:9000)"),
        "{output:?}"
    );
}

#[test]
fn config_check_names_file_line_column_and_path_of_an_unknown_key() {
    let text = GOOD.replace("    args: [stdio]", "    argz: [stdio]");
    let (path, output) = check(&text, &[]);
    assert!(!output.status.success(), "{output:?}");
    let expected = format!("{path}:11:5: servers.github.argz: unknown field `argz`");
    assert!(
        output.stderr.contains(&expected),
        "expected `{expected}` in:\n{}",
        output.stderr
    );
}

#[test]
fn config_check_names_file_line_column_and_path_of_a_bad_type() {
    let text = GOOD.replace("max_restarts: 3", "max_restarts: many");
    let (path, output) = check(&text, &[]);
    assert!(!output.status.success(), "{output:?}");
    let expected =
        format!("{path}:13:21: servers.github.restart.max_restarts: expected an integer");
    assert!(
        output.stderr.contains(&expected),
        "expected `{expected}` in:\n{}",
        output.stderr
    );
}

#[test]
fn config_check_names_an_unset_variable_and_honours_defaults_and_escapes() {
    let text = GOOD.replace("127.0.0.1:9000", "${WARDEN_IT_UNSET_LISTEN}");
    let (path, output) = check(&text, &[]);
    assert!(!output.status.success(), "{output:?}");
    let expected = format!(
        "{path}:2:11: server.listen: environment variable `WARDEN_IT_UNSET_LISTEN` is not set"
    );
    assert!(
        output.stderr.contains(&expected),
        "expected `{expected}` in:\n{}",
        output.stderr
    );

    let text = GOOD
        .replace(
            "127.0.0.1:9000",
            "${WARDEN_IT_UNSET_LISTEN:-127.0.0.1:9001}",
        )
        .replace(
            "args: [stdio]",
            "args: [\"${WARDEN_IT_ARG}\", \"$${NOT_EXPANDED}\"]",
        );
    let (_, output) = check(&text, &[("WARDEN_IT_ARG", "stdio")]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stdout.contains("listening on 127.0.0.1:9001"),
        "{output:?}"
    );
}

#[test]
fn config_check_reports_a_missing_file() {
    let output = check_file(Path::new("/nonexistent/warden.yaml"), &[]);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        output
            .stderr
            .contains("/nonexistent/warden.yaml: cannot read the profile"),
        "{output:?}"
    );
}

#[test]
fn shipped_profiles_pass_config_check() {
    let quickstart = check_file(&repo_file("config/quickstart.yaml"), &[]);
    assert!(quickstart.status.success(), "{quickstart:?}");
    let production = check_file(
        &repo_file("config/production.yaml"),
        &[(
            "DATABASE_URL",
            "postgresql://warden@db.internal:5432/warden?sslmode=disable",
        )],
    );
    assert!(production.status.success(), "{production:?}");
}

#[test]
fn production_profile_refuses_to_load_without_a_database_url() {
    let output = check_file(&repo_file("config/production.yaml"), &[]);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        output
            .stderr
            .contains("environment variable `DATABASE_URL` is not set"),
        "{output:?}"
    );
}

#[test]
fn serve_refuses_a_bad_profile_before_creating_anything() {
    let dir = dirs::temp_dir("config");
    let state_dir = dir.path().join("state");
    let path = dir.path().join("profile.yaml");
    let text = format!(
        "server:\n  state_dir: {}\n  listen: nowhere\n",
        state_dir.display()
    );
    std::fs::write(&path, text).expect("write the profile");
    let mut serve = command(&["serve", "--config"]);
    serve.arg(&path);
    let output = run(serve);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        output
            .stderr
            .contains(&format!("{}:3:11: server.listen:", path.display())),
        "{output:?}"
    );
    assert!(
        output
            .stderr
            .contains("expected an address such as `127.0.0.1:8080`, found `nowhere`"),
        "{output:?}"
    );
    assert!(!state_dir.exists(), "serve created the state directory");
}

#[test]
fn version_names_version_revision_and_build_profile() {
    let output = run(command(&["version"]));
    assert!(output.status.success(), "{output:?}");
    let expected = format!("warden {} (revision ", env!("CARGO_PKG_VERSION"));
    assert!(output.stdout.starts_with(&expected), "{output:?}");
    assert!(output.stdout.contains(" build)"), "{output:?}");
}
