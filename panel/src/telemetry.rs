//! Structured logging: JSON lines on stdout (journald keeps them; one-shot commands whose
//! stdout is their result log to stderr), and the same lines in a
//! file when `LOG_FILE` is set (spec §10). Secrets never reach here: handlers skip them in
//! their spans and configuration values are not logged.

use std::{fs::OpenOptions, sync::Mutex};

use anyhow::Context;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogConfig;

pub fn init(log: &LogConfig, to_stdout: bool) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&log.filter)
        .with_context(|| format!("LOG_LEVEL/RUST_LOG: '{}' is not a log filter", log.filter))?;
    let console = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false);
    let console = if to_stdout {
        console.with_writer(std::io::stdout).boxed()
    } else {
        console.with_writer(std::io::stderr).boxed()
    };
    let file = match &log.file {
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("LOG_FILE: cannot open {}", path.display()))?;
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_ansi(false)
                    .with_writer(Mutex::new(f))
                    .boxed(),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(file)
        .try_init()
        .context("a tracing subscriber was already installed")?;
    Ok(())
}
