//! `mpanel-bench`: measures the real panel and agents from outside, each figure beside the
//! comparison a user would pick instead, measured in the same run. It prints a markdown
//! table on stdout (the processes' logs go to stderr) and, with `--json PATH`, the same
//! figures as JSON. It never asserts a timing: it exits non-zero only when the benchmark
//! itself could not run.
//!
//! The panel and agent binaries are the ones next to this executable (build them with the
//! same profile: `cargo build --release -p mpanel -p mpanel-agent -p mpanel-bench`), or
//! those in `MPANEL_BIN_DIR`.

mod hub;
mod idle_agent;
mod ingest;
mod order_live;
mod report;
mod roundtrip;
mod setup;
mod sshd;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mpanel-bench",
    about = "Benchmarks of the real mPanel, side by side with what a user would pick instead"
)]
struct Cli {
    /// Also write the figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// `POST /api/servers/{id}/ping` through one real agent, N times in a row, against `ssh`
    /// to a private sshd running `true` (plain and over a ControlMaster).
    Roundtrip(roundtrip::Args),
    /// Paid orders through `POST /api/orders` (simulate dispatcher) at a concurrency, against
    /// pgbench running the same statements on the same database.
    Ingest(ingest::Args),
    /// Bursts of paid hosting orders with one mailbox each until the site, the zone and the
    /// mailbox are live through the real agents, nginx, PowerDNS and the Postfix maps.
    OrderLive(order_live::Args),
    /// N simulated agents (real certificates from the panel's CA, the real protocol, many
    /// loopback source addresses): handshakes/s, RSS and CPU per held agent, the storm after
    /// kill -9 and restart, and API ping p99 with N held against none.
    Hub(hub::Args),
    /// One real agent, connected and idle at the panel's default intervals: its resident
    /// memory against an sshd listening and holding one connection.
    IdleAgent(idle_agent::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = bin_dir()?;
    // Kept until the end: the directory the other agent binary is measured from.
    let _agent_dir = match &cli.command {
        Command::IdleAgent(a) => idle_agent::use_agent(a, &dir)?,
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let report = runtime.block_on(async {
        match cli.command {
            Command::Roundtrip(a) => roundtrip::run(a).await,
            Command::Ingest(a) => ingest::run(a).await,
            Command::OrderLive(a) => order_live::run(a).await,
            Command::Hub(a) => hub::run(a).await,
            Command::IdleAgent(a) => idle_agent::run(a).await,
        }
    })?;
    print!("{}", report.markdown());
    if let Some(path) = cli.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Points the harness at the `mpanel` and `mpanel-agent` built beside this executable,
/// unless `MPANEL_BIN_DIR` already says where they are; returns that directory.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("MPANEL_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("locate this executable")?;
            let dir = exe
                .parent()
                .context("the executable's directory")?
                .to_owned();
            // SAFETY: called before the runtime starts, while this is the only thread.
            unsafe { std::env::set_var("MPANEL_BIN_DIR", &dir) };
            dir
        }
    };
    for bin in ["mpanel", "mpanel-agent"] {
        anyhow::ensure!(
            dir.join(bin).exists(),
            "{} is missing: build it with the same profile as this benchmark \
             (cargo build --release -p mpanel -p mpanel-agent -p mpanel-bench), \
             or set MPANEL_BIN_DIR",
            dir.join(bin).display()
        );
    }
    Ok(dir)
}
