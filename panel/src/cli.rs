//! The `mpanel` command line: `serve`, `worker`, `migrate`, `create-admin`, `completions`.
//! Each subcommand's `--help` says what it is for and shows an example.
//!
//! Exit codes: 0 success, 1 a runtime failure (database unreachable, …), 2 bad usage or
//! invalid configuration.

use std::{io::Read, process::ExitCode};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    app::{AppState, Application, cancel_on_signals},
    bootstrap::{self, NewAdmin},
    config::{Config, DispatcherKind},
    db, duties, jobs,
    model::UserRole,
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "mpanel",
    version,
    about = "mPanel hosting control panel: HTTP API, job worker, fleet hub and operator commands",
    after_help = "Settings come from the environment (and ./.env): see .env.example. \
                  To try everything on one machine: cargo run -p mpanel-dev"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API, the fleet hub and a job worker.
    #[command(
        long_about = "Run the HTTP API under /api, the agents' fleet hub and (unless \
                      RUN_WORKER=false) a job worker. Configuration comes from the environment \
                      (and ./.env if present); SIGTERM drains in-flight work.",
        after_help = "Example:\n  MPANEL_ENV=development PORT=2271 mpanel serve\n  \
                      curl http://127.0.0.1:2271/api/public/health"
    )]
    Serve,
    /// Run a job worker alone, beside `serve`.
    #[command(
        long_about = "Run a job worker alone: several may run beside `serve`, which runs one \
                      too unless RUN_WORKER=false. It reaches every agent through whichever \
                      replica holds its connection.",
        after_help = "Example:\n  WORKER_CONCURRENCY=8 mpanel worker"
    )]
    Worker,
    /// Apply pending database migrations and exit.
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://mpanel@127.0.0.1/mpanel mpanel migrate"
    )]
    Migrate,
    /// Create an operator account, and its tenant if the slug is new.
    #[command(
        after_help = "Example:\n  echo 'a long passphrase' | mpanel create-admin --tenant migrahosting \\\n    \
                      --email admin@example.com --role SUPER_ADMIN --password-stdin"
    )]
    CreateAdmin {
        /// Tenant slug, e.g. migrahosting.
        #[arg(long)]
        tenant: String,
        /// Display name of the tenant when it is created (defaults to the slug).
        #[arg(long)]
        tenant_name: Option<String>,
        /// The operator's e-mail, which is their login.
        #[arg(long)]
        email: String,
        /// SUPER_ADMIN, ADMIN, SUPPORT, BILLING or READ_ONLY.
        #[arg(long, value_parser = |s: &str| s.parse::<UserRole>())]
        role: UserRole,
        /// Display name of the user (defaults to the e-mail's local part).
        #[arg(long)]
        name: Option<String>,
        /// Read the password from standard input (first line), so it never appears in
        /// the process list or shell history.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Print a shell completion script for mpanel.
    #[command(
        after_help = "Examples:\n  mpanel completions bash > /etc/bash_completion.d/mpanel\n  \
                      mpanel completions zsh > \"${fpath[1]}/_mpanel\"\n  \
                      mpanel completions fish > ~/.config/fish/completions/mpanel.fish"
    )]
    Completions {
        /// bash, zsh or fish.
        shell: Shell,
    },
}

/// The shells completion scripts are made for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Writes `command`'s completion script for `shell` (named `name`) to `out`.
fn write_completions(
    shell: Shell,
    command: &mut clap::Command,
    name: &str,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    use clap_complete::{Shell as S, generate};
    let shell = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    // Into a buffer first: clap_complete panics on a failed write (`| head` closing the pipe).
    let mut script = Vec::new();
    generate(shell, command, name, &mut script);
    out.write_all(&script)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Completions need no configuration: they work before any .env exists.
    if let Command::Completions { shell } = cli.command {
        let written =
            write_completions(shell, &mut Cli::command(), "mpanel", &mut std::io::stdout());
        return match written {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("mpanel: writing the completion script: {e}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        };
    }
    // A missing .env is normal; values already in the environment win.
    let _ = dotenvy::dotenv();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpanel: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mpanel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("mpanel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    // Commands whose stdout is their result log to stderr.
    let logs_to_stdout = matches!(command, Command::Serve | Command::Worker);
    telemetry::init(&config.log, logs_to_stdout)?;
    if logs_to_stdout {
        // The long-running commands: serve holds agents, both hold a database pool.
        crate::rlimit::raise_open_files();
    }
    match command {
        Command::Serve => {
            if !config.is_production() {
                tracing::warn!(
                    "development mode: unset secrets are random for this process only; \
                     set MPANEL_ENV=production for a real install"
                );
            }
            for name in config.unused_settings() {
                tracing::warn!(
                    variable = name,
                    "{name} is set but unused: the DNS and mail agents hold these APIs now \
                     (see the operator guide's dns and mail roles)"
                );
            }
            warn_missing_settings(&config);
            let app = Application::build(config).await?;
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone());
            app.run(shutdown).await
        }
        Command::Worker => {
            warn_missing_settings(&config);
            let state = AppState::connect(config).await?;
            let dispatcher = jobs::dispatcher::for_state(&state);
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone());
            let periodic = TaskTracker::new();
            duties::spawn(&periodic, &state, &shutdown);
            periodic.close();
            jobs::worker::Worker::new(state.clone(), dispatcher)
                .run(shutdown)
                .await;
            if tokio::time::timeout(state.config.shutdown_timeout, periodic.wait())
                .await
                .is_err()
            {
                tracing::warn!("periodic duties did not stop in time; exiting anyway");
            }
            state.db.close().await;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Migrate => {
            let pool = db::connect_quiet(&config.database).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Completions { .. } => unreachable!("answered before the configuration is read"),
        Command::CreateAdmin {
            tenant,
            tenant_name,
            email,
            role,
            name,
            password_stdin: _,
        } => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading the password from standard input")?;
            let password = input.lines().next().unwrap_or("").to_owned();
            let pool = db::connect_quiet(&config.database).await?;
            db::migrate(&pool).await?;
            let created = bootstrap::create_admin(
                &pool,
                NewAdmin {
                    tenant_slug: tenant,
                    tenant_name,
                    email,
                    role,
                    display_name: name,
                    password,
                },
            )
            .await?;
            println!("{}", serde_json::to_string(&created)?);
            Ok(())
        }
    }
}

/// Settings that may be absent but make part of the work fail: said at start by the
/// processes that run jobs, rather than discovered at the first order. (The simulate
/// dispatcher runs no job for real, so it needs none of them.)
fn warn_missing_settings(config: &Config) {
    if config.jobs.dispatcher == DispatcherKind::Simulate {
        return;
    }
    if config.dns.nameservers.is_empty() {
        tracing::warn!(
            variable = "DNS_NAMESERVERS",
            "DNS_NAMESERVERS is not set: every DNS job (the zone of each hosting, e-mail or DNS \
             order, and each zone edit) fails permanently until it is; set it to the zones' \
             nameservers, e.g. DNS_NAMESERVERS=ns1.yourdomain.com,ns2.yourdomain.com"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bash_completions_name_every_subcommand() {
        let mut out = Vec::new();
        write_completions(Shell::Bash, &mut Cli::command(), "mpanel", &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        for sub in ["serve", "worker", "migrate", "create-admin", "completions"] {
            assert!(script.contains(sub), "{sub} missing from:\n{script}");
        }
    }

    #[test]
    fn every_subcommand_has_an_example() {
        for sub in Cli::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no about", sub.get_name());
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("mpanel "),
                "{} has no example",
                sub.get_name()
            );
        }
    }
}
