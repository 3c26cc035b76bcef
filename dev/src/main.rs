//! `mpanel-dev`: mPanel's main job on this machine in one command. It builds the panel and
//! the agent, starts them on the local PostgreSQL and Redis with a real agent per role whose
//! software is installed (the others simulated), places a sample paid order, prints every
//! step and how to see the site, the zone, the welcome e-mail and the operator's login, then
//! says `mpanel dev: ready` and runs until Ctrl-C or SIGTERM, when it stops and removes
//! everything it made (processes, database, Redis keys, files) and exits 0.
//!
//! Machine-readable lines for scripts and the test: `workdir: `, `database: `,
//! `redis prefix: `, `pids: `, `site: `, `https: `, `certificate: `, `zone: `,
//! `welcome e-mail: `, `imap: `, `login: `.

mod binaries;
mod demo;
mod fleet;
mod mailcatch;
mod order;
mod tools;
mod watch;

use std::{
    fs::File,
    io::Write,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::PermissionsExt,
    },
    path::Path,
    process::ExitCode,
    sync::{Mutex, OnceLock},
    time::Instant,
};

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    demo::{Demo, Options},
    tools::Role,
};

#[derive(Debug, Parser)]
#[command(
    name = "mpanel-dev",
    version,
    about = "Run mPanel's whole main job on this machine: a paid order becomes a live site, zone and mailbox",
    long_about = "Builds mpanel and mpanel-agent, starts the panel on the local PostgreSQL and \
                  Redis (its own database and key prefix), one real agent per role whose \
                  software is installed (nginx, PowerDNS, Postfix maps + Dovecot; the others are \
                  simulated), a local SMTP sink, a demo tenant, operator and catalog, places a \
                  sample paid order and prints each step and how to see its result. With pebble \
                  installed the site also gets an HTTPS certificate from a local ACME test CA. \
                  Ctrl-C stops and removes everything it made.",
    after_help = "Examples:\n  cargo run -p mpanel-dev\n  cargo run -p mpanel-dev -- --verbose --simulate mail"
)]
struct Cli {
    /// Use the mpanel and mpanel-agent already built beside this executable (or in
    /// MPANEL_BIN_DIR) instead of running cargo build first.
    #[arg(long)]
    no_build: bool,
    /// Show the panel's and the agents' logs on stderr instead of in the work directory's
    /// logs.txt.
    #[arg(long, short)]
    verbose: bool,
    /// Simulate these roles' jobs even where their software is installed
    /// (comma-separated: web, dns, mail).
    #[arg(long, value_name = "ROLES", value_delimiter = ',', value_parser = parse_role)]
    simulate: Vec<Role>,
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::ALL
        .into_iter()
        .find(|r| r.name() == name)
        .ok_or_else(|| format!("'{name}' is not web, dns or mail"))
}

/// The terminal's stderr while the processes' logs go to a file.
static CONSOLE: OnceLock<Mutex<File>> = OnceLock::new();

/// An error or a note for the person at the terminal, whatever stderr was redirected to.
fn say(message: &str) {
    match CONSOLE.get() {
        Some(console) => {
            let mut console = console.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(console, "{message}");
        }
        None => eprintln!("{message}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = binaries::prepare(!cli.no_build) {
        say(&format!("mpanel dev: {e:#}"));
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let workdir = match workdir(cli.verbose) {
        Ok(dir) => dir,
        Err(e) => {
            say(&format!("mpanel dev: {e:#}"));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("mpanel dev: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let redis_prefix = format!("mpanel-dev:{}:", uuid::Uuid::new_v4().simple());
    let options = Options {
        workdir: workdir.path().to_owned(),
        redis_prefix,
        started,
        simulate: cli.simulate,
    };
    let ok = runtime.block_on(run(options));
    // The runtime's last tasks (log readers) hold files in the work directory.
    drop(runtime);
    let path = workdir.path().to_owned();
    if !ok {
        keep_logs(&path);
    }
    match workdir.close() {
        Ok(()) => println!("mpanel dev: stopped; removed {}", path.display()),
        Err(e) => say(&format!(
            "mpanel dev: could not remove {}: {e}",
            path.display()
        )),
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// After a failed start the work directory still goes, but its log is worth keeping: it is
/// copied beside it (`<workdir>.log`).
fn keep_logs(workdir: &Path) {
    let log = workdir.join("logs.txt");
    if !log.exists() {
        return;
    }
    let kept = workdir.with_extension("log");
    match std::fs::copy(&log, &kept) {
        Ok(_) => say(&format!(
            "mpanel dev: the processes' logs are kept in {}",
            kept.display()
        )),
        Err(e) => say(&format!("mpanel dev: could not keep the logs: {e}")),
    }
}

/// Creates the work directory every temporary file goes under (`TMPDIR`, inherited by the
/// harness and the processes), and unless `verbose` sends stderr to its `logs.txt`. Must run
/// while this is the only thread (it sets an environment variable).
fn workdir(verbose: bool) -> anyhow::Result<tempfile::TempDir> {
    let workdir = tempfile::Builder::new()
        .prefix("mpanel-dev-")
        .tempdir()
        .context("create the work directory")?;
    // Dovecot's login and mail processes run as other users and walk through it.
    std::fs::set_permissions(workdir.path(), std::fs::Permissions::from_mode(0o755))
        .context("chmod the work directory")?;
    // SAFETY: called before the runtime starts, while this is the only thread.
    unsafe { std::env::set_var("TMPDIR", workdir.path()) };
    println!("workdir: {}", workdir.path().display());
    if !verbose {
        let log = workdir.path().join("logs.txt");
        redirect_stderr(&log)?;
        println!("logs: {} (or run with --verbose)", log.display());
    }
    Ok(workdir)
}

/// Points fd 2 at `log` (the panel and agents inherit it), keeping the terminal's stderr
/// for [`say`] and panics.
fn redirect_stderr(log: &Path) -> anyhow::Result<()> {
    let console = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("dup stderr")?;
    let _ = CONSOLE.set(Mutex::new(File::from(console)));
    let file = File::create(log).with_context(|| format!("create {}", log.display()))?;
    // SAFETY: dup2(2) on two descriptors this process owns; fd 2 is replaced atomically.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error()).context("redirect stderr");
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        say(&format!("mpanel dev: {info}"));
        default_hook(info);
    }));
    Ok(())
}

/// The demo from start to Ctrl-C; false when it could not start.
async fn run(options: Options) -> bool {
    let redis_prefix = options.redis_prefix.clone();
    let redis_prefix = redis_prefix.as_str();
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            say(&format!("mpanel dev: cannot handle signals: {e}"));
            return false;
        }
    };
    // A task of its own, so that a panic of the harness (it asserts) comes back as an error
    // and a signal during start-up can stop it half-way.
    let mut setup = tokio::spawn(Demo::start(options));
    let outcome = tokio::select! {
        joined = &mut setup => Some(joined),
        _ = interrupt.recv() => None,
        _ = terminate.recv() => None,
    };
    let demo = match outcome {
        Some(Ok(Ok(demo))) => demo,
        Some(Ok(Err(e))) => {
            say(&format!("mpanel dev: {e:#}"));
            return give_up(redis_prefix, false).await;
        }
        Some(Err(e)) if e.is_panic() => {
            say("mpanel dev: start-up failed (the panic above says why)");
            return give_up(redis_prefix, false).await;
        }
        Some(Err(e)) => {
            say(&format!("mpanel dev: start-up failed ({e})"));
            return give_up(redis_prefix, false).await;
        }
        None => {
            println!("mpanel dev: stopping during start-up");
            setup.abort();
            let _ = setup.await;
            return give_up(redis_prefix, true).await;
        }
    };
    println!("mpanel dev: ready (Ctrl-C stops everything and removes what it made)");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    println!("mpanel dev: stopping");
    demo.stop().await;
    true
}

/// After a start-up that did not finish: what was started has been dropped (processes
/// killed, the database dropped); the Redis keys are removed here.
async fn give_up(redis_prefix: &str, ok: bool) -> bool {
    mpanel_tests::panel::delete_redis_keys(redis_prefix).await;
    ok
}
