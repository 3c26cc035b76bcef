//! The API keeps the contract it publishes: schemathesis (PyPI) generates requests for every
//! operation of `/api/openapi.json` — valid and invalid ones — and sends them with a
//! SUPER_ADMIN token to the real panel. No answer may be a 5xx, use an undocumented status,
//! or break its documented schema.
//!
//! `.ci/run` installs schemathesis into `~/.cache/mpanel/schemathesis-venv`; `SCHEMATHESIS`
//! names another binary.

use std::path::PathBuf;

use tokio::process::Command;

use mpanel_tests::{TestApp, api::org_with_roles};

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = home.join(".cache/mpanel/schemathesis-venv/bin/schemathesis");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("schemathesis")
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let app = TestApp::spawn_with(&[
        ("JWT_ACCESS_EXPIRES_IN", "2h"),
        // Nothing runs the jobs the fuzzer queues; they just stay PENDING.
        ("RUN_WORKER", "false"),
    ])
    .await;
    let org = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let token = org.super_admin().token().to_owned();
    let report = tempfile::tempdir().unwrap();
    let binary = schemathesis();
    let output = Command::new(&binary)
        .arg("run")
        .arg(app.url("/api/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance",
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--max-examples",
            "15",
            "--request-timeout",
            "30",
            "--seed",
            "20261124",
            "--workers",
            "2",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-database",
            "none",
            "--no-color",
            "--report-dir",
        ])
        .arg(report.path())
        // Logging out or revoking the caller's own session would turn the rest of the run
        // into 401s, which proves nothing.
        .args(["--exclude-path", "/api/auth/logout"])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its caches land in the working directory: keep them out of the checkout.
        .current_dir(report.path())
        // Async: the panel's log pipe is drained by this runtime while schemathesis runs.
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "could not run {} ({e}): install it with `pip install schemathesis` \
                 (.ci/run does, into ~/.cache/mpanel/schemathesis-venv)",
                binary.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // The run really exercised the API, not an empty document.
    assert!(
        stdout.contains("passed") && !stdout.contains("No operations"),
        "{stdout}"
    );
    app.cleanup().await;
}
