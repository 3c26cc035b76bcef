//! The mPanel agent: runs on each server, enrolls with the panel, and (in a later version)
//! dials the panel's fleet hub over an mTLS WebSocket to execute the typed commands of
//! `mpanel-protocol` for the roles its server has.
//!
//! - [`cli`]: the command line (clap).
//! - [`enroll`]: `mpanel-agent enroll`: key generation, CSR, the enrollment request, and
//!   the checks that the answer comes from the panel the token pins.
//! - [`state`]: the state directory (key, certificates, `enrollment.json`), written
//!   atomically with private modes.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error. Logs go to stderr as plain text
//! (journald adds its own timestamps when it runs us).

pub mod cli;
pub mod enroll;
pub mod state;

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;

/// The version this agent reports to the panel.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Parses the process arguments, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        cli::Command::Enroll(args) => runtime.block_on(enroll::run(args)),
    }
}

fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MPANEL_AGENT_LOG").unwrap_or_else(|_| {
        EnvFilter::new(if verbose {
            "mpanel_agent=debug,info"
        } else {
            "mpanel_agent=info,warn"
        })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // Under systemd, journald stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
