//! An idle real agent's memory: `mpanel-agent run` connected to the real panel with the
//! production log level and the panel's default heartbeat and metrics intervals, its
//! resident set sampled from `/proc` over a window long enough to hold a metrics report.
//! Beside it what a server managed without an agent keeps resident instead: a private
//! `sshd` listening, and the same sshd holding one connection (a ControlMaster), as an agent
//! holds its one connection to the panel.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde_json::json;

use crate::{
    report::{Against, Figure, Goal, Report, Row},
    setup::{self, Panel},
    sshd::{self, Sshd},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long the idle agent is sampled; the default spans one metrics report at the
    /// panel's default AGENT_METRICS_INTERVAL (60 s) and five heartbeats.
    #[arg(long, default_value_t = 75)]
    window_secs: u64,
    /// Time between two samples.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
    /// Time after the agent is online before sampling starts (its first metrics report,
    /// after which it gives back its start-up pages).
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// The agent binary to measure. Default: the shipped build (`--profile release-agent`,
    /// optimised for size) when this benchmark is a release build and it has been built,
    /// else the `mpanel-agent` beside the panel.
    #[arg(long)]
    agent: Option<PathBuf>,
}

/// The agent [`use_agent`] chose instead of the one beside the panel.
static MEASURED: OnceLock<PathBuf> = OnceLock::new();

/// Before the runtime starts (it changes `MPANEL_BIN_DIR`): when the agent to measure is
/// not the one in `dir`, a temp dir holding links to `dir`'s panel and that agent becomes
/// the harness's binary directory. The temp dir must outlive the run.
pub fn use_agent(args: &Args, dir: &Path) -> anyhow::Result<Option<tempfile::TempDir>> {
    let shipped = dir
        .parent()
        .filter(|_| dir.ends_with("release"))
        .map(|target| target.join("release-agent/mpanel-agent"))
        .filter(|p| p.exists());
    let Some(agent) = args.agent.clone().or(shipped) else {
        return Ok(None);
    };
    ensure!(agent.exists(), "{} does not exist", agent.display());
    let links = tempfile::tempdir().context("temp dir for the binaries")?;
    std::os::unix::fs::symlink(dir.join("mpanel"), links.path().join("mpanel"))?;
    std::os::unix::fs::symlink(
        std::fs::canonicalize(&agent)?,
        links.path().join("mpanel-agent"),
    )?;
    // SAFETY: called from main before the runtime starts, while this is the only thread.
    unsafe { std::env::set_var("MPANEL_BIN_DIR", links.path()) };
    let _ = MEASURED.set(agent);
    Ok(Some(links))
}

/// Resident memory of one process (or a process and its children) at one instant, KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Resident {
    total: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "idle-agent",
        json!({
            "windowSecs": args.window_secs,
            "sampleMs": args.sample_ms,
            "settleSecs": args.settle_secs,
        }),
    );
    setup::note_binaries(&mut report);
    if let Some(agent) = MEASURED.get() {
        report.note(format!("agent measured: {}", agent.display()));
    }
    ensure!(args.window_secs > 0, "--window-secs must be at least 1");
    ensure!(args.sample_ms > 0, "--sample-ms must be at least 1");

    let panel = Panel::start(&[]).await;
    let (_server, mut agent) = panel.agent("bench-idle-agent").await;
    // What an operator's agent.toml holds: no debug logging, default back-off.
    let hub = mpanel_tests::fleet::hub_addr(&panel.app).await;
    agent.terminate().await;
    let connections = agent.count(&["connected to the hub"]);
    std::fs::write(
        agent.config_path(),
        format!(
            "state_dir = {:?}\nhostname = \"bench-idle-agent\"\nhub_url = \"wss://{hub}\"\n",
            agent.state_dir().to_str().context("state dir is UTF-8")?
        ),
    )?;
    agent.start();
    let sampled = async {
        // Connected again with the new config (the server's row may still say online from
        // the first connection).
        agent
            .wait_count(&["connected to the hub"], connections + 1)
            .await;
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        sample(
            &[agent.pid() as u32],
            Duration::from_secs(args.window_secs),
            Duration::from_millis(args.sample_ms),
        )
        .await
    }
    .await;
    agent.terminate().await;
    panel.cleanup().await;
    let samples = sampled?;

    let ssh = match sshd::unavailable() {
        Some(why) => Err(why),
        None => sshd_resident(&args).await.map_err(|e| format!("{e:#}")),
    };

    let mean = |f: fn(&Resident) -> u64| {
        samples.iter().map(|s| f(s) as f64).sum::<f64>() / samples.len() as f64 / 1024.0
    };
    let max = samples.iter().map(|s| s.total).max().unwrap_or(0) as f64 / 1024.0;
    let against = |mut row: Row, f: fn(&Resident) -> u64| {
        for (what, i) in [("sshd listening", 0), ("sshd holding one connection", 1)] {
            row = row.against(match &ssh {
                Err(why) => Against::skipped(what, why.clone()),
                Ok(pair) => {
                    let r = if i == 0 { &pair.0 } else { &pair.1 };
                    Against::measured(what, Figure::of(f(r) as f64 / 1024.0, "MiB"))
                }
            });
        }
        row
    };
    report.push(
        against(
            Row::new(
                "idle agent RSS, mean",
                Some(Figure::of(mean(|s| s.total), "MiB")),
            ),
            |r| r.total,
        )
        .goal(Goal::at_most(4.0)),
    );
    report.push(against(
        Row::new("idle agent RSS, max", Some(Figure::of(max, "MiB"))),
        |r| r.total,
    ));
    report.push(against(
        Row::new(
            "of which anonymous (heap, stacks, relocated data), mean",
            Some(Figure::of(mean(|s| s.anon), "MiB")),
        ),
        |r| r.anon,
    ));
    report.push(against(
        Row::new(
            "of which file pages (code of the binary and libraries), mean",
            Some(Figure::of(mean(|s| s.file), "MiB")),
        ),
        |r| r.file,
    ));
    report.push(Row::new(
        "idle agent threads",
        Some(Figure::count(
            samples.iter().map(|s| s.threads).max().unwrap_or(0) as i64,
            "",
        )),
    ));
    report.note(format!(
        "{} samples of /proc/<pid>/status (VmRSS, RssAnon, RssFile+RssShmem) every {} ms over {} s, \
         from {} s after the agent (no roles, log level info) was online; the panel's default \
         intervals (heartbeat 15 s, metrics 60 s)",
        samples.len(),
        args.sample_ms,
        args.window_secs,
        args.settle_secs
    ));
    match &ssh {
        Ok(_) => report.note(
            "sshd: the private loopback sshd of `roundtrip` (no PAM), idle, then with one \
             ControlMaster connection open: the listener and its per-connection processes \
             summed; each the mean of 8 samples",
        ),
        Err(why) => report.note(format!("sshd skipped: {why}")),
    }
    Ok(report)
}

/// Samples the summed resident memory of `pids` every `every` for `window`.
async fn sample(pids: &[u32], window: Duration, every: Duration) -> anyhow::Result<Vec<Resident>> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    while started.elapsed() < window {
        tick.tick().await;
        let mut sum = Resident::default();
        for pid in pids {
            let r = resident(*pid).with_context(|| format!("read /proc/{pid}/status"))?;
            sum.total += r.total;
            sum.anon += r.anon;
            sum.file += r.file;
            sum.threads += r.threads;
        }
        samples.push(sum);
    }
    ensure!(!samples.is_empty(), "no samples taken");
    Ok(samples)
}

fn resident(pid: u32) -> anyhow::Result<Resident> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Resident {
        total: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:") + field("RssShmem:"),
        threads: field("Threads:"),
    })
}

/// The pid's children (by `/proc/*/stat`'s ppid), recursively.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    let parents: Vec<(u32, u32)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // The command may hold spaces and parentheses: the ppid follows the last ')'.
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &parents {
            if *pp == parent {
                found.push(*p);
                frontier.push(*p);
            }
        }
    }
    found
}

/// The sshd listener idle, and the listener with its processes for one open connection.
async fn sshd_resident(args: &Args) -> anyhow::Result<(Resident, Resident)> {
    let mut sshd = Sshd::start().await?;
    let measured = async {
        let pid = sshd.pid().context("sshd's pid")?;
        let every = Duration::from_millis(args.sample_ms);
        let window = every * 8;
        // Start-up's own `ssh true` check has finished: only the listener is left.
        let idle = mean_of(&sample(&[pid], window, every).await?);
        sshd.open_master().await?;
        sshd.run_true(true).await?;
        let mut pids = vec![pid];
        pids.extend(descendants(pid));
        let held = mean_of(&sample(&pids, window, every).await?);
        anyhow::Ok((idle, held))
    }
    .await;
    sshd.stop().await;
    measured
}

fn mean_of(samples: &[Resident]) -> Resident {
    let n = samples.len().max(1) as u64;
    let sum = samples.iter().fold(Resident::default(), |a, s| Resident {
        total: a.total + s.total,
        anon: a.anon + s.anon,
        file: a.file + s.file,
        threads: a.threads.max(s.threads),
    });
    Resident {
        total: sum.total / n,
        anon: sum.anon / n,
        file: sum.file / n,
        threads: sum.threads,
    }
}
