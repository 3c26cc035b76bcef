//! The `mpanel` binary refuses to start on bad configuration, with one message naming every
//! problem and a non-zero exit code. (These runs need no database.)

use std::{process::Output, time::Duration};

use tokio::process::Command;

async fn mpanel(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpanel"));
    // Every variable the panel reads, so the developer's shell cannot change the outcome.
    for v in mpanel::config::VARIABLES {
        cmd.env_remove(v);
    }
    cmd.current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("mpanel exits within 30s")
        .expect("mpanel runs")
}

#[tokio::test]
async fn unreachable_database_is_a_clear_error() {
    let out = mpanel(
        &["serve"],
        &[("DATABASE_URL", "postgres://nope@127.0.0.1:1/x")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

#[tokio::test]
async fn production_without_secrets_lists_every_problem() {
    let out = mpanel(
        &["serve"],
        &[
            ("MPANEL_ENV", "production"),
            (
                "DATABASE_URL",
                "postgres://mpanel:hunter2@127.0.0.1:5432/mpanel",
            ),
            ("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ("APP_URL", "https://panel.example.com"),
            ("AGENT_PUBLIC_URL", "wss://panel.example.com:2272"),
            ("SMTP_HOST", "mail.example.com"),
            ("EMAIL_FROM", "no-reply@example.com"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for name in [
        "JWT_SECRET",
        "MARKETING_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_SECRET",
    ] {
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
    }
    assert!(
        !stderr.contains("hunter2"),
        "a secret was printed: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing should be logged before config is valid"
    );
}

#[tokio::test]
async fn malformed_values_are_each_named() {
    let out = mpanel(
        &["serve"],
        &[
            ("PORT", "eighty"),
            ("JWT_ACCESS_EXPIRES_IN", "soon"),
            ("HOST", "anywhere"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for name in ["PORT", "JWT_ACCESS_EXPIRES_IN", "HOST"] {
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
    }
}

#[tokio::test]
async fn create_admin_requires_password_on_stdin_and_a_known_role() {
    let out = mpanel(
        &[
            "create-admin",
            "--tenant",
            "acme",
            "--email",
            "a@acme.com",
            "--role",
            "OWNER",
            "--password-stdin",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SUPER_ADMIN"));

    let out = mpanel(
        &[
            "create-admin",
            "--tenant",
            "acme",
            "--email",
            "a@acme.com",
            "--role",
            "ADMIN",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-stdin"));
}
