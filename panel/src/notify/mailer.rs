//! Hands one composed e-mail to the SMTP relay (lettre over tokio; STARTTLS, implicit TLS or
//! plain as `SMTP_TLS` says; rustls with ring and the system's roots), or, in development
//! without `SMTP_HOST`, only logs its recipients and subject so the outbox still drains.
//!
//! A body is never logged: it may carry credentials.

use std::{net::IpAddr, time::Duration};

use anyhow::Context;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{authentication::Credentials, extension::ClientId},
};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::config::{Config, SmtpTls};

/// How long one delivery may take (connect, TLS, the whole dialogue) before it counts as a
/// failed attempt; the outbox holds the e-mail's row lock meanwhile.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One e-mail ready to go; `id` is its outbox row.
pub struct Email<'a> {
    pub id: Uuid,
    pub to: &'a [String],
    pub subject: &'a str,
    pub body: &'a str,
}

/// What became of an e-mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The relay accepted it.
    Sent,
    /// Development without SMTP: logged (recipients and subject only), not delivered.
    Logged,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The e-mail itself is unusable (a bad address): no retry can help.
    #[error("{0}")]
    Invalid(String),
    /// The relay could not be reached or refused this time.
    #[error("{0}")]
    Smtp(String),
}

pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    /// The right-hand side of our Message-IDs: the panel's own host name.
    domain: String,
}

impl Mailer {
    pub fn from_config(config: &Config) -> anyhow::Result<Mailer> {
        let domain = config
            .app_url
            .host_str()
            .unwrap_or("localhost")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let Some(smtp) = &config.smtp else {
            return Ok(Mailer {
                transport: None,
                from: None,
                domain,
            });
        };
        let mut builder = match smtp.tls {
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                .context("SMTP_HOST/SMTP_TLS: cannot set up STARTTLS")?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .context("SMTP_HOST/SMTP_TLS: cannot set up TLS")?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        };
        builder = builder
            .port(smtp.port)
            .timeout(Some(SMTP_TIMEOUT))
            .hello_name(client_id(&domain));
        if let (Some(user), Some(pass)) = (&smtp.user, &smtp.pass) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                pass.expose_secret().to_owned(),
            ));
        }
        let from = smtp
            .from
            .parse::<Mailbox>()
            .context("EMAIL_FROM is not a mailbox")?;
        Ok(Mailer {
            transport: Some(builder.build()),
            from: Some(from),
            domain,
        })
    }

    pub async fn send(&self, email: &Email<'_>) -> Result<Delivery, MailError> {
        let (Some(transport), Some(from)) = (&self.transport, &self.from) else {
            tracing::info!(
                email_id = %email.id,
                to = ?email.to,
                subject = email.subject,
                "SMTP is not configured (development): e-mail logged, not sent"
            );
            return Ok(Delivery::Logged);
        };
        let mut message = Message::builder()
            .from(from.clone())
            .subject(email.subject)
            // The same id on every attempt: a copy delivered twice after a crash between
            // sending and recording it is recognisable as one message.
            .message_id(Some(format!("<{}@{}>", email.id.simple(), self.domain)))
            .header(ContentType::TEXT_PLAIN);
        for to in email.to {
            let mailbox = to
                .parse::<Mailbox>()
                .map_err(|e| MailError::Invalid(format!("recipient '{to}': {e}")))?;
            message = message.to(mailbox);
        }
        let message = message
            .body(email.body.to_owned())
            .map_err(|e| MailError::Invalid(e.to_string()))?;
        transport
            .send(message)
            .await
            .map_err(|e| MailError::Smtp(e.to_string()))?;
        Ok(Delivery::Sent)
    }
}

/// How we introduce ourselves in EHLO: the panel's host name (or address).
fn client_id(host: &str) -> ClientId {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
        Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
        Err(_) => ClientId::Domain(host.to_owned()),
    }
}
