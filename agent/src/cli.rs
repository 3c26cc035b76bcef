//! The command line: `mpanel-agent enroll …` and `mpanel-agent run [--config PATH]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mpanel_protocol::messages::{EnrollmentToken, Hostname};
use url::Url;

/// Where the agent keeps its key, certificates and enrollment record.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mpanel-agent";

#[derive(Debug, Parser)]
#[command(
    name = "mpanel-agent",
    version,
    about = "The mPanel agent: enrolls this server with its panel and executes the panel's commands"
)]
pub struct Cli {
    /// More detailed logs (or set MPANEL_AGENT_LOG to a tracing filter).
    #[arg(long, short, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this server: generate a key here, send a certificate request with the
    /// one-time token, and store the certificate the panel signs.
    Enroll(EnrollArgs),
    /// Run the daemon: dial the panel's fleet hub and execute its commands.
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
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
