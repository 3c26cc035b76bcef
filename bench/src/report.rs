//! What a subcommand measured: rows of figures, each beside the comparison a user would pick
//! instead (measured in the same run, or a labelled constant) and, where issue 16 sets one,
//! the goal with how far the figure is from it. Printed as a markdown table on stdout and
//! written as JSON; nothing here decides the exit status.

use serde::Serialize;

/// One measured (or constant) number.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub value: f64,
    pub unit: &'static str,
    /// A count: shown without decimals.
    #[serde(skip)]
    pub whole: bool,
}

impl Figure {
    pub fn ms(value: f64) -> Figure {
        Figure {
            value,
            unit: "ms",
            whole: false,
        }
    }

    pub fn secs(value: f64) -> Figure {
        Figure {
            value,
            unit: "s",
            whole: false,
        }
    }

    pub fn per_sec(value: f64, what: &'static str) -> Figure {
        Figure {
            value,
            unit: what,
            whole: false,
        }
    }

    pub fn of(value: f64, unit: &'static str) -> Figure {
        Figure {
            value,
            unit,
            whole: false,
        }
    }

    /// A number of things (jobs, commands).
    pub fn count(n: i64, unit: &'static str) -> Figure {
        Figure {
            value: n as f64,
            unit,
            whole: true,
        }
    }

    fn show(&self) -> String {
        let v = self.value;
        let digits = if self.whole || v.abs() >= 100.0 {
            0
        } else if v.abs() >= 10.0 {
            1
        } else {
            2
        };
        format!("{v:.digits$} {}", self.unit).trim_end().to_owned()
    }
}

/// The comparison beside a figure.
#[derive(Debug, Clone, Serialize)]
pub struct Against {
    /// What it is, e.g. "ssh `true` (new connection)".
    pub what: String,
    /// Its figure; `None` when it was skipped (see `skipped`).
    pub figure: Option<Figure>,
    /// Why it was not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// True when the figure is a constant of reference, not a measurement of this run.
    pub constant: bool,
}

impl Against {
    pub fn measured(what: impl Into<String>, figure: Figure) -> Against {
        Against {
            what: what.into(),
            figure: Some(figure),
            skipped: None,
            constant: false,
        }
    }

    pub fn constant(what: impl Into<String>, figure: Figure) -> Against {
        Against {
            what: what.into(),
            figure: Some(figure),
            skipped: None,
            constant: true,
        }
    }

    pub fn skipped(what: impl Into<String>, why: impl Into<String>) -> Against {
        Against {
            what: what.into(),
            figure: None,
            skipped: Some(why.into()),
            constant: false,
        }
    }

    fn show(&self) -> String {
        match (&self.figure, &self.skipped) {
            (Some(f), _) if self.constant => format!("{}: {} (constant)", self.what, f.show()),
            (Some(f), _) => format!("{}: {}", self.what, f.show()),
            (None, Some(_)) => format!("{}: skipped (see below)", self.what),
            (None, None) => format!("{}: —", self.what),
        }
    }
}

/// Issue 16's goal for a figure: at most or at least `value` (same unit as the figure).
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub at_most: bool,
    pub value: f64,
    /// Where the goal's condition differs from this run's (e.g. "with 10,000 agents held").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<&'static str>,
}

impl Goal {
    pub fn at_most(value: f64) -> Goal {
        Goal {
            at_most: true,
            value,
            condition: None,
        }
    }

    pub fn at_least(value: f64) -> Goal {
        Goal {
            at_most: false,
            value,
            condition: None,
        }
    }

    pub fn when(mut self, condition: &'static str) -> Goal {
        self.condition = Some(condition);
        self
    }

    /// "met", or by how much the figure misses (a factor).
    fn verdict(&self, got: f64) -> String {
        let met = if self.at_most {
            got <= self.value
        } else {
            got >= self.value
        };
        if met {
            "met".to_owned()
        } else if self.at_most {
            format!("missed ({:.1}× the goal)", got / self.value)
        } else if got > 0.0 {
            format!("missed (goal is {:.1}× this)", self.value / got)
        } else {
            "missed".to_owned()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub measure: String,
    pub mpanel: Option<Figure>,
    pub against: Vec<Against>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
    /// "met" / "missed (…)", computed from `goal` and `mpanel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    pub fn new(measure: impl Into<String>, mpanel: Option<Figure>) -> Row {
        Row {
            measure: measure.into(),
            mpanel,
            against: Vec::new(),
            goal: None,
            verdict: None,
            note: None,
        }
    }

    pub fn against(mut self, a: Against) -> Row {
        self.against.push(a);
        self
    }

    pub fn goal(mut self, g: Goal) -> Row {
        self.verdict = self.mpanel.as_ref().map(|f| g.verdict(f.value));
        self.goal = Some(g);
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.note = Some(n.into());
        self
    }
}

/// Everything one subcommand printed.
#[derive(Debug, Serialize)]
pub struct Report {
    pub subcommand: &'static str,
    /// RFC 3339, UTC.
    pub date: String,
    pub machine: Machine,
    /// The subcommand's arguments.
    pub params: serde_json::Value,
    pub rows: Vec<Row>,
    /// Sentences about how the figures were taken.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// `/proc/loadavg`'s 1-minute figure when the run started: other work on the machine.
    pub load_1m: f64,
}

impl Machine {
    pub fn read() -> Machine {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let load_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cores,
            memory_gib,
            kernel,
            load_1m,
        }
    }
}

impl Report {
    pub fn new(subcommand: &'static str, params: serde_json::Value) -> Report {
        Report {
            subcommand,
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine: Machine::read(),
            params,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "### mpanel-bench {} — {} ({} cores, {} GiB, Linux {}, load {:.2} at start)\n\nparameters: `{}`\n\n",
            self.subcommand,
            self.date,
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.kernel,
            self.machine.load_1m,
            self.params
        );
        out.push_str("| measure | mPanel | comparison (same run unless marked constant) | goal (issue 16) |\n");
        out.push_str("|---|---|---|---|\n");
        for r in &self.rows {
            let mpanel = r.mpanel.as_ref().map_or("—".to_owned(), Figure::show);
            let against = if r.against.is_empty() {
                "—".to_owned()
            } else {
                r.against
                    .iter()
                    .map(Against::show)
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            let goal = match (&r.goal, &r.verdict) {
                (Some(g), verdict) => {
                    let unit = r.mpanel.as_ref().map_or("", |f| f.unit);
                    let cond = g.condition.map(|c| format!(" {c}")).unwrap_or_default();
                    let op = if g.at_most { "≤" } else { "≥" };
                    format!(
                        "{op} {} {unit}{cond}: {}",
                        g.value,
                        verdict.as_deref().unwrap_or("not measured")
                    )
                }
                (None, _) => String::new(),
            };
            let measure = match &r.note {
                Some(n) => format!("{} ({n})", r.measure),
                None => r.measure.clone(),
            };
            out.push_str(&format!("| {measure} | {mpanel} | {against} | {goal} |\n"));
        }
        let mut skipped: Vec<String> = Vec::new();
        for a in self.rows.iter().flat_map(|r| &r.against) {
            if let Some(why) = &a.skipped {
                let line = format!("{} was skipped: {why}", a.what);
                if !skipped.contains(&line) {
                    skipped.push(line);
                }
            }
        }
        for n in self.notes.iter().chain(&skipped) {
            out.push_str(&format!("\n- {n}"));
        }
        out.push('\n');
        out
    }
}

/// Percentiles of a sample (nearest rank), in the sample's unit.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[i.clamp(1, s.len()) - 1]
        };
        Some(Spread {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: s[s.len() - 1],
            n: s.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Spread::of(&s).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let one = Spread::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn goals_say_by_how_much_they_are_missed() {
        assert_eq!(Goal::at_most(2.0).verdict(1.5), "met");
        assert_eq!(Goal::at_most(2.0).verdict(5.0), "missed (2.5× the goal)");
        assert_eq!(
            Goal::at_least(2000.0).verdict(500.0),
            "missed (goal is 4.0× this)"
        );
    }
}
