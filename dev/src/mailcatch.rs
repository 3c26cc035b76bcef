//! Saves every message the SMTP sink accepts as a file (`NNN.eml`, the envelope as
//! `X-Envelope-*` headers above the message as received) and prints where it went.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use mpanel_tests::smtp::SmtpSink;

/// One caught e-mail.
#[derive(Debug, Clone)]
pub struct Caught {
    pub path: PathBuf,
    pub to: String,
    pub subject: String,
    /// The decoded text body.
    pub text: String,
}

impl Caught {
    /// The password the e-mail gives for `mailbox` ("Mailbox <address>: password <secret>").
    pub fn mailbox_password(&self, mailbox: &str) -> Option<String> {
        let prefix = format!("Mailbox {mailbox}: password ");
        self.text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&prefix))
            .map(|p| p.trim().to_owned())
    }
}

#[derive(Clone)]
pub struct Catcher {
    dir: PathBuf,
    caught: Arc<Mutex<Vec<Caught>>>,
}

impl Catcher {
    pub fn new(dir: PathBuf) -> anyhow::Result<Catcher> {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Catcher {
            dir,
            caught: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Saves the sink's messages as they arrive; runs until aborted.
    pub async fn run(self, sink: Arc<SmtpSink>) {
        let mut saved = 0;
        loop {
            for message in sink.messages().into_iter().skip(saved) {
                saved += 1;
                let path = self.dir.join(format!("{saved:03}.eml"));
                let to = message.rcpt_to.join(", ");
                let file = format!(
                    "X-Envelope-From: {}\r\nX-Envelope-To: {to}\r\n{}",
                    message.mail_from, message.data
                );
                if let Err(e) = std::fs::write(&path, file) {
                    println!(
                        "e-mail to {to} caught but not saved ({}: {e})",
                        path.display()
                    );
                    continue;
                }
                let caught = Caught {
                    path,
                    to,
                    subject: message.subject(),
                    text: message.text(),
                };
                println!(
                    "e-mail caught: to {}, \"{}\" → {}",
                    caught.to,
                    caught.subject,
                    caught.path.display()
                );
                self.caught
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(caught);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `n` e-mails were saved.
    pub async fn wait(&self, n: usize, within: Duration) -> anyhow::Result<Vec<Caught>> {
        let deadline = Instant::now() + within;
        loop {
            let caught = self
                .caught
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if caught.len() >= n {
                return Ok(caught);
            }
            if Instant::now() > deadline {
                bail!(
                    "{n} e-mail(s) expected at the SMTP sink within {within:?}, got {}",
                    caught.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
