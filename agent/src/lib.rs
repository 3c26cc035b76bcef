//! The mPanel agent: runs on each server, enrolls with the panel, and dials the panel's
//! fleet hub over an mTLS WebSocket to execute the typed commands of `mpanel-protocol` for
//! the roles its server has.
//!
//! - [`cli`]: the command line (clap).
//! - [`enroll`]: `mpanel-agent enroll`: key generation, CSR, the enrollment request, and
//!   the checks that the answer comes from the panel the token pins.
//! - [`state`]: the state directory (key, certificates, `enrollment.json`), written
//!   atomically with private modes.
//! - [`config`]: `agent.toml` of `mpanel-agent run`.
//! - [`run`]: the daemon: connection, reconnect, heartbeats, metrics, renewal, shutdown.
//! - [`executors`]: one function per command; [`journal`]: ids already answered.
//! - [`metrics`]: health samples (sysinfo, systemd).
//! - [`memory`]: giving back the code pages an idle agent no longer uses.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error. Logs go to stderr as plain text
//! (journald adds its own timestamps when it runs us).

pub mod cli;
pub mod config;
pub mod enroll;
pub mod executors;
pub mod host;
pub mod journal;
pub mod memory;
pub mod metrics;
pub mod roles;
pub mod run;
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
    // The daemon's configuration holds its log level: read it before logging starts.
    let config = match &cli.command {
        cli::Command::Run(args) => match config::AgentConfig::load(args.config.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                init_logging(cli.verbose, None);
                tracing::error!("{e:#}");
                return ExitCode::from(2);
            }
        },
        cli::Command::Enroll(_) => None,
    };
    init_logging(cli.verbose, config.as_ref().map(|c| c.log_level.as_str()));
    match run(cli, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli, config: Option<config::AgentConfig>) -> anyhow::Result<()> {
    // One thread: an idle agent should cost next to nothing. Blocking work (metrics
    // samples, file I/O) runs on tokio's blocking threads; an idle one is kept for longer
    // than the panel's default metrics interval (60 s), so that each sample reuses it rather
    // than creating a thread (whose creation maps about 0.4 MiB of libc, loader and runtime
    // code) every minute.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(300))
        .build()?;
    match (cli.command, config) {
        (cli::Command::Enroll(args), _) => runtime.block_on(enroll::run(args)),
        (cli::Command::Run(_), Some(config)) => runtime.block_on(run::run(config)),
        (cli::Command::Run(_), None) => unreachable!("the configuration is loaded first"),
    }
}

fn init_logging(verbose: bool, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MPANEL_AGENT_LOG").unwrap_or_else(|_| {
        EnvFilter::new(match (verbose, level) {
            (true, _) => "mpanel_agent=debug,info",
            (false, Some(level)) => level,
            (false, None) => "mpanel_agent=info,warn",
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
