//! The command line: `mpanel-agent enroll …`, `mpanel-agent run [--config PATH]` and
//! `mpanel-agent completions <shell>`. Each subcommand's `--help` shows an example.

use std::path::PathBuf;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use mpanel_protocol::messages::{EnrollmentToken, Hostname};
use url::Url;

/// Where the agent keeps its key, certificates and enrollment record.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mpanel-agent";

/// What the daemon's code is handed: `completions` never reaches it (see [`Full`]).
#[derive(Debug)]
pub struct Cli {
    /// More detailed logs (or set MPANEL_AGENT_LOG to a tracing filter).
    pub verbose: bool,
    pub command: Command,
}

/// The whole command line. `completions` is answered while the arguments are parsed, as
/// `--help` is, so that the daemon's dispatch only ever sees its own commands.
#[derive(Debug, Parser)]
#[command(
    name = "mpanel-agent",
    version,
    about = "The mPanel agent: enrolls this server with its panel and executes the panel's commands",
    after_help = "Example (on a new server):\n  \
                  MPANEL_ENROLL_TOKEN=mpe1_… mpanel-agent enroll --panel https://panel.example.com\n  \
                  mpanel-agent run"
)]
struct Full {
    /// More detailed logs (or set MPANEL_AGENT_LOG to a tracing filter).
    #[arg(long, short, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: FullCommand,
}

#[derive(Debug, Subcommand)]
enum FullCommand {
    #[command(flatten)]
    Daemon(Command),
    /// Print a shell completion script for mpanel-agent.
    #[command(
        after_help = "Examples:\n  mpanel-agent completions bash > /etc/bash_completion.d/mpanel-agent\n  \
                      mpanel-agent completions zsh > \"${fpath[1]}/_mpanel-agent\"\n  \
                      mpanel-agent completions fish > ~/.config/fish/completions/mpanel-agent.fish"
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

fn write_completions(shell: Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap_complete::{Shell as S, generate};
    let shell = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    // Into a buffer first: clap_complete panics on a failed write (`| head` closing the pipe).
    let mut script = Vec::new();
    generate(shell, &mut Full::command(), "mpanel-agent", &mut script);
    out.write_all(&script)
}

impl CommandFactory for Cli {
    fn command() -> clap::Command {
        Full::command()
    }

    fn command_for_update() -> clap::Command {
        Full::command_for_update()
    }
}

impl FromArgMatches for Cli {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
        match Full::from_arg_matches(matches)? {
            Full {
                verbose,
                command: FullCommand::Daemon(command),
            } => Ok(Cli { verbose, command }),
            Full {
                command: FullCommand::Completions { shell },
                ..
            } => match write_completions(shell, &mut std::io::stdout()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("mpanel-agent: writing the completion script: {e}");
                    std::process::exit(1)
                }
                _ => std::process::exit(0),
            },
        }
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Cli::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Parser for Cli {}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this server: generate a key here, send a certificate request with the
    /// one-time token, and store the certificate the panel signs.
    #[command(
        after_help = "Example (the token from POST /api/servers/{id}/enrollment-token):\n  \
                      MPANEL_ENROLL_TOKEN=mpe1_… mpanel-agent enroll --panel https://panel.example.com"
    )]
    Enroll(EnrollArgs),
    /// Run the daemon: dial the panel's fleet hub and execute its commands.
    #[command(after_help = "Example:\n  mpanel-agent run --config /etc/mpanel-agent/agent.toml")]
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML configuration (default /etc/mpanel-agent/agent.toml; a missing default file
    /// means every default).
    #[arg(long, value_name = "PATH", env = "MPANEL_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The panel's base URL, e.g. https://panel.example.com (plain http only to loopback).
    #[arg(long, value_name = "URL", value_parser = parse_panel_url)]
    pub panel: Url,

    /// The one-time token printed by the panel (mpe1_…). Prefer the environment variable:
    /// other users of this machine can read command lines.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MPANEL_ENROLL_TOKEN",
        hide_env_values = true,
        value_parser = TokenParser
    )]
    pub token: EnrollmentToken,

    /// Where to store the key, certificates and enrollment record (created 0700).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// The name this server reports; defaults to the kernel's host name.
    #[arg(long, value_name = "NAME", value_parser = parse_hostname)]
    pub hostname: Option<Hostname>,

    /// Replace an existing enrollment (its key and certificate) in the state directory.
    #[arg(long)]
    pub force: bool,
}

/// Parses `--token` without quoting it back: a mistyped token is still mostly secret.
#[derive(Clone)]
struct TokenParser;

impl clap::builder::TypedValueParser for TokenParser {
    type Value = EnrollmentToken;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<EnrollmentToken, clap::Error> {
        value
            .to_str()
            .and_then(|s| EnrollmentToken::parse(s).ok())
            .ok_or_else(|| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    "--token: not an enrollment token (expected mpe1_<64 hex>_<64 hex>, as \
                     printed by the panel)\n",
                )
                .with_cmd(cmd)
            })
    }
}

fn parse_hostname(s: &str) -> Result<Hostname, String> {
    Hostname::parse(s).map_err(|e| e.to_string())
}

/// https anywhere; http only to this machine, where nobody can read the token on the way.
pub fn parse_panel_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(
            "use https:// (over plain http the token and certificate would travel in clear)"
                .to_owned(),
        ),
        other => Err(format!("scheme '{other}' is not https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panel_urls() {
        assert!(parse_panel_url("https://panel.example.com").is_ok());
        assert!(parse_panel_url("http://127.0.0.1:2271").is_ok());
        assert!(parse_panel_url("http://[::1]:2271/").is_ok());
        assert!(parse_panel_url("http://localhost").is_ok());
        assert!(parse_panel_url("http://panel.example.com").is_err());
        assert!(parse_panel_url("ftp://127.0.0.1").is_err());
        assert!(parse_panel_url("panel.example.com").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["mpanel-agent", "-v", "run"]).unwrap();
        assert!(cli.verbose && matches!(cli.command, Command::Run(_)));
    }

    #[test]
    fn bash_completions_name_every_subcommand() {
        let mut out = Vec::new();
        write_completions(Shell::Bash, &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        for sub in ["enroll", "run", "completions"] {
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
                help.contains("mpanel-agent "),
                "{} has no example",
                sub.get_name()
            );
        }
    }
}
