//! The binary's configuration hygiene: which `.env` it reads, and what it
//! says about secrets. Each test runs `metacast` with a clean environment;
//! `serve` is pointed at a closed Postgres port, so it stops right after
//! start-up has said what it says.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, a panic is the failure report"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The HS256 fallback of docker-compose.yml: public, so never safe.
const COMPOSE_SECRET: &str = "local-compose-secret-change-me-0123456789";
/// A secret nobody else knows.
const OWN_SECRET: &str = "cli-test-secret-cli-test-secret-cli-test";
/// Nothing listens there: `serve` fails at its first Postgres connection.
const CLOSED_DATABASE: &str = "postgres://postgres@127.0.0.1:1/metacast";

/// A directory of its own under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("metacast-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `metacast args…` in `dir` with only `vars` in its environment.
fn metacast(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metacast"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

/// stdout and stderr together (log lines go to stdout, warnings to stderr).
fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn dotenv_is_read_from_the_current_directory_only() {
    let root = TempDir::new();
    let child = root.0.join("child");
    std::fs::create_dir_all(&child).unwrap();
    let dotenv = format!("METACAST_JWT_SECRET={OWN_SECRET}\n");
    std::fs::write(root.0.join(".env"), &dotenv).unwrap();

    // A .env in a parent directory (a home directory, another checkout) is
    // not this process's configuration.
    let below = metacast(&child, &["token", "--sub", "alice"], &[]);
    assert!(
        !below.status.success(),
        "the parent's .env was read: {}",
        said(&below)
    );
    assert!(
        said(&below).contains("METACAST_JWT_SECRET"),
        "{}",
        said(&below)
    );

    let here = metacast(&root.0, &["token", "--sub", "alice"], &[]);
    assert!(here.status.success(), "{}", said(&here));
}

#[test]
fn a_published_secret_is_warned_about() {
    let dir = TempDir::new();
    let vars = [("METACAST_JWT_SECRET", COMPOSE_SECRET)];
    let token = metacast(&dir.0, &["token", "--sub", "alice"], &vars);
    assert!(token.status.success(), "{}", said(&token));
    let stderr = String::from_utf8_lossy(&token.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("METACAST_JWT_SECRET"),
        "{stderr}"
    );
    // stdout stays the token alone, for `$(metacast token …)`.
    assert_eq!(String::from_utf8_lossy(&token.stdout).lines().count(), 1);

    let serve = metacast(
        &dir.0,
        &["serve"],
        &[
            ("METACAST_JWT_SECRET", COMPOSE_SECRET),
            ("DATABASE_URL", CLOSED_DATABASE),
        ],
    );
    let text = said(&serve);
    assert!(
        text.contains("WARN") && text.contains("METACAST_JWT_SECRET"),
        "{text}"
    );

    let own = metacast(
        &dir.0,
        &["token", "--sub", "alice"],
        &[("METACAST_JWT_SECRET", OWN_SECRET)],
    );
    assert!(own.status.success(), "{}", said(&own));
    assert!(own.stderr.is_empty(), "{}", said(&own));
}

#[test]
fn serve_dev_says_when_it_replaces_a_configured_secret() {
    let dir = TempDir::new();
    let serve = metacast(
        &dir.0,
        &["serve", "--dev"],
        &[
            ("METACAST_JWT_SECRET", OWN_SECRET),
            ("DATABASE_URL", CLOSED_DATABASE),
        ],
    );
    let text = said(&serve);
    assert!(
        text.contains("--dev") && text.contains("METACAST_JWT_SECRET"),
        "{text}"
    );

    // Nothing to say without a configured secret.
    let unset = metacast(
        &dir.0,
        &["serve", "--dev"],
        &[("DATABASE_URL", CLOSED_DATABASE)],
    );
    assert!(
        !said(&unset).contains("METACAST_JWT_SECRET"),
        "{}",
        said(&unset)
    );
}
