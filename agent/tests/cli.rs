//! The `mpanel-agent` binary's command line: help, usage errors (exit 2) and the checks that
//! run before it contacts any panel (exit 1). Enrolling against a real panel is tested in
//! `tests/tests/enrollment.rs`.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mpanel-agent"))
        .args(args)
        .env_remove("MPANEL_ENROLL_TOKEN")
        .output()
        .expect("run mpanel-agent")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn token() -> String {
    format!("mpe1_{}_{}", "ab".repeat(32), "0f".repeat(32))
}

#[test]
fn help_and_version_succeed() {
    let out = agent(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enroll"));

    let out = agent(&["enroll", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--panel",
        "--token",
        "--state-dir",
        "--force",
        "/var/lib/mpanel-agent",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }

    let out = agent(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2() {
    let token = token();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["enroll"],
        vec!["enroll", "--panel", "http://127.0.0.1:1"],
        vec!["enroll", "--token", token.as_str()],
        vec!["enroll", "--panel", "not a url", "--token", token.as_str()],
        vec![
            "enroll",
            "--panel",
            "http://127.0.0.1:1",
            "--token",
            "mpe1_short",
        ],
        vec![
            "enroll",
            "--panel",
            "http://panel.example.com",
            "--token",
            token.as_str(),
        ],
        vec![
            "enroll",
            "--panel",
            "http://127.0.0.1:1",
            "--token",
            token.as_str(),
            "--hostname",
            "bad host",
        ],
    ] {
        let out = agent(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?}");
    }
}

#[test]
fn a_malformed_token_is_refused_without_echoing_it() {
    let secretish = "mpe1_not-really-a-token-but-private";
    let out = agent(&[
        "enroll",
        "--panel",
        "http://127.0.0.1:1",
        "--token",
        secretish,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("enrollment token"), "{err}");
    assert!(!err.contains("private"), "token echoed: {err}");
}

#[test]
fn an_existing_enrollment_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("enrollment.json"), "{}").unwrap();
    // Port 1 on loopback: nothing listens. The refusal must come before any connection.
    let out = agent(&[
        "enroll",
        "--panel",
        "http://127.0.0.1:1",
        "--token",
        &token(),
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--hostname",
        "srv1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("--force"), "{err}");
    assert!(!err.contains("reach"), "{err}");

    // With --force it goes on and fails only at the unreachable panel; nothing is written.
    let out = agent(&[
        "enroll",
        "--panel",
        "http://127.0.0.1:1",
        "--token",
        &token(),
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--hostname",
        "srv1",
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot reach the panel"), "{err}");
    assert!(!err.contains(&token()), "token leaked: {err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn the_token_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mpanel-agent"))
        .args([
            "enroll",
            "--panel",
            "http://127.0.0.1:1",
            "--hostname",
            "srv1",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .env("MPANEL_ENROLL_TOKEN", token())
        .output()
        .unwrap();
    // Past parsing (exit 1, not 2): it tried the panel.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!dir.path().join("state").exists());
}
