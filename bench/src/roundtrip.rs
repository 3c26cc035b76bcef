//! Command round trip: `POST /api/servers/{id}/ping` through the panel and one real agent,
//! N times in a row over one keep-alive HTTP connection, timed by the client; beside it `ssh`
//! to a private loopback sshd running `true`, with a new connection each time and over one
//! ControlMaster connection — what an operator scripting servers would use instead.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;

use crate::{
    report::{Against, Figure, Goal, Report, Row, Spread},
    setup::{self, Panel},
    sshd::{self, Sshd},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pings to time (after the warm-up).
    #[arg(long, default_value_t = 500)]
    n: usize,
    /// Untimed pings first (connection set-up, caches).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Plain `ssh` runs (each a new connection, ~0.1–0.3 s); at most `n`.
    #[arg(long, default_value_t = 50)]
    ssh_n: usize,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "roundtrip",
        json!({ "n": args.n, "warmup": args.warmup, "sshN": args.ssh_n.min(args.n) }),
    );
    setup::note_binaries(&mut report);
    ensure!(args.n > 0, "--n must be at least 1");

    let panel = Panel::start(&[]).await;
    let (server, mut agent) = panel.agent("bench-agent").await;
    let measured = ping_loop(&panel, &server, &args).await;
    agent.terminate().await;
    panel.cleanup().await;
    let (client, server_side) = measured?;

    let ssh = match sshd::unavailable() {
        Some(why) => Err(why),
        None => ssh_runs(args.ssh_n.min(args.n), args.n)
            .await
            .map_err(|e| format!("{e:#}")),
    };

    let api = Spread::of(&client).context("no pings timed")?;
    let panel_side = Spread::of(&server_side);
    let (plain, shared) = match &ssh {
        Ok((plain, shared)) => (Spread::of(plain), Spread::of(shared)),
        Err(_) => (None, None),
    };
    let pick = |s: &Option<Spread>, f: fn(&Spread) -> f64| s.as_ref().map(f);
    for (label, get) in [
        ("p50", (|s: &Spread| s.p50) as fn(&Spread) -> f64),
        ("p90", |s: &Spread| s.p90),
        ("p99", |s: &Spread| s.p99),
        ("max", |s: &Spread| s.max),
    ] {
        let mut row = Row::new(
            format!("ping through the API, {label}"),
            Some(Figure::ms(get(&api))),
        );
        for (what, s) in [
            ("ssh `true`, new connection", &plain),
            ("ssh `true` over a ControlMaster", &shared),
        ] {
            row = row.against(match (&ssh, pick(s, get)) {
                (Err(why), _) => Against::skipped(what, why.clone()),
                (Ok(_), Some(v)) => Against::measured(what, Figure::ms(v)),
                (Ok(_), None) => Against::skipped(what, "no runs"),
            });
        }
        if label == "p99" {
            row = row.goal(Goal::at_most(2.0).when("with 10,000 agents held (here: 1)"));
        }
        report.push(row);
    }
    if let Some(p) = panel_side {
        report.push(
            Row::new(
                "panel-side round trip (the answer's roundTripMs), p50",
                Some(Figure::ms(p.p50)),
            )
            .note(format!("p99 {:.2} ms", p.p99)),
        );
    }
    report.note(format!(
        "{} pings in a row from one keep-alive HTTP client, each to the same idle agent with no roles; \
         timed from send to the end of the answer's body",
        api.n
    ));
    if let Ok((plain, shared)) = &ssh {
        report.note(format!(
            "ssh: a private sshd on 127.0.0.1 (own host key and authorized key, BatchMode, \
             StrictHostKeyChecking=no, SetEnv SHLVL=1 so that the remote bash skips ~/.bashrc) running `true`: {} runs with a new connection each, {} over one ControlMaster",
            plain.len(),
            shared.len()
        ));
    }
    Ok(report)
}

/// Client-side and panel-side (the answer's `roundTripMs`) milliseconds of `args.n` pings.
async fn ping_loop(
    panel: &Panel,
    server: &str,
    args: &Args,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let http = &panel.app.http;
    let url = panel
        .app
        .url(&format!("/api/servers/{server}/ping?timeoutSecs=10"));
    let mut client = Vec::with_capacity(args.n);
    let mut server_side = Vec::with_capacity(args.n);
    for i in 0..args.warmup + args.n {
        let started = Instant::now();
        let res = http
            .post(&url)
            .bearer_auth(&panel.admin)
            .json(&json!({}))
            .send()
            .await
            .context("ping reaches the panel")?;
        let status = res.status();
        let body: serde_json::Value = res.json().await.context("ping answer")?;
        let took = started.elapsed();
        ensure!(status == 200, "ping answered {status}: {body}");
        if i >= args.warmup {
            client.push(took.as_secs_f64() * 1000.0);
            if let Some(ms) = body["roundTripMs"].as_f64() {
                server_side.push(ms);
            }
        }
    }
    Ok((client, server_side))
}

/// Milliseconds of `plain_n` new-connection runs and `shared_n` ControlMaster runs.
async fn ssh_runs(plain_n: usize, shared_n: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut sshd = Sshd::start().await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let measured = async {
        let mut plain = Vec::new();
        for _ in 0..plain_n {
            plain.push(ms(sshd.run_true(false).await?));
        }
        sshd.open_master().await?;
        // The first command over the master sets up its session machinery.
        sshd.run_true(true).await?;
        let mut shared = Vec::new();
        for _ in 0..shared_n {
            shared.push(ms(sshd.run_true(true).await?));
        }
        anyhow::Ok((plain, shared))
    }
    .await;
    sshd.stop().await;
    measured
}
