//! The sender loop: delivers due `outbound_emails`, one row at a time, each under its own
//! row lock taken with `FOR UPDATE SKIP LOCKED` and held until the outcome is recorded, so
//! any number of workers drain one outbox and no e-mail is sent twice by two of them. (A
//! process dying between the relay's acceptance and the commit sends that one e-mail again:
//! delivery is at least once, and every attempt carries the same Message-ID.)
//!
//! Outcomes: SENT clears the sealed body; a failure counts an attempt, keeps the error and
//! waits `JOB_RETRY_BASE` doubling (capped at an hour) before the next one; after
//! `MAX_ATTEMPTS` the e-mail is FAILED and stays for an operator to look at.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::mailer::{Delivery, Email, MailError, Mailer};
use crate::{
    app::AppState,
    util::{backoff, pause},
};

/// How often the outbox is polled when idle.
const POLL: Duration = Duration::from_secs(1);
/// Attempts before an e-mail is given up (about 2.5 hours with the default 5 s base).
pub const MAX_ATTEMPTS: i32 = 10;
const RETRY_CAP: Duration = Duration::from_secs(3600);
/// E-mails sent per wake-up before looking at shutdown and sleeping again.
const BATCH: usize = 50;
/// Kept of a relay's error message.
const MAX_ERROR_LEN: usize = 1000;

/// Runs until `shutdown`; an e-mail being sent then finishes (bounded by the SMTP timeout).
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mailer = loop {
        match Mailer::from_config(&state.config) {
            Ok(m) => break m,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot set up the mailer; e-mails wait"
                );
                if pause(&shutdown, Duration::from_secs(30)).await {
                    return;
                }
            }
        }
    };
    loop {
        let mut sent = 0;
        while sent < BATCH && !shutdown.is_cancelled() {
            match deliver_one(&state, &mailer).await {
                Ok(true) => sent += 1,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: cannot read or record an e-mail; trying again");
                    break;
                }
            }
        }
        if pause(&shutdown, POLL).await {
            return;
        }
    }
}

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    kind: String,
    to_addresses: Vec<String>,
    subject: String,
    sealed_body: Option<Vec<u8>>,
    attempts: i32,
}

/// Sends the next due e-mail, if any; true when there was one.
async fn deliver_one(state: &AppState, mailer: &Mailer) -> sqlx::Result<bool> {
    let mut tx = state.db.begin().await?;
    let due: Option<Due> = sqlx::query_as(
        "SELECT id, kind, to_addresses, subject, sealed_body, attempts FROM outbound_emails
          WHERE status = 'PENDING' AND send_after <= now()
          ORDER BY send_after LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(due) = due else {
        return Ok(false);
    };
    let outcome = match due.sealed_body.as_deref().map(|b| state.sealer.open(b)) {
        None => Err(MailError::Invalid("no body to send".into())),
        // Maybe sealed by a process with another key (development without CREDENTIALS_KEY,
        // or a key being rolled out): another attempt, perhaps by another worker, may open it.
        Some(Err(e)) => Err(MailError::Smtp(e.to_string())),
        Some(Ok(body)) => match std::str::from_utf8(&body) {
            Ok(text) => {
                mailer
                    .send(&Email {
                        id: due.id,
                        to: &due.to_addresses,
                        subject: &due.subject,
                        body: text,
                    })
                    .await
            }
            Err(_) => Err(MailError::Invalid("the body is not UTF-8".into())),
        },
    };
    let attempts = due.attempts + 1;
    match outcome {
        Ok(delivery) => {
            let note = (delivery == Delivery::Logged)
                .then_some("SMTP is not configured (development): logged, not delivered");
            sqlx::query(
                "UPDATE outbound_emails SET status = 'SENT', sealed_body = NULL, sent_at = now(),
                        attempts = $2, last_error = $3
                  WHERE id = $1",
            )
            .bind(due.id)
            .bind(attempts)
            .bind(note)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(email_id = %due.id, kind = %due.kind, recipients = due.to_addresses.len(), attempts, "e-mail sent");
        }
        Err(err) => {
            let give_up = matches!(err, MailError::Invalid(_)) || attempts >= MAX_ATTEMPTS;
            let retry_in = backoff(state.config.jobs.retry_base, RETRY_CAP, attempts);
            let mut error = err.to_string();
            if error.len() > MAX_ERROR_LEN {
                let mut end = MAX_ERROR_LEN;
                while !error.is_char_boundary(end) {
                    end -= 1;
                }
                error.truncate(end);
            }
            sqlx::query(
                "UPDATE outbound_emails
                    SET status = CASE WHEN $2 THEN 'FAILED' ELSE 'PENDING' END,
                        attempts = $3, last_error = $4,
                        send_after = now() + make_interval(secs => $5)
                  WHERE id = $1",
            )
            .bind(due.id)
            .bind(give_up)
            .bind(attempts)
            .bind(&error)
            .bind(retry_in.as_secs_f64())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if give_up {
                tracing::error!(email_id = %due.id, kind = %due.kind, attempts, error, "e-mail failed; giving up");
            } else {
                tracing::warn!(email_id = %due.id, kind = %due.kind, attempts, error, retry_in_secs = retry_in.as_secs_f64(), "e-mail not sent; will retry");
            }
        }
    }
    Ok(true)
}
