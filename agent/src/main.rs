//! `mpanel-agent`: the daemon on each server. It dials the panel over an mTLS WebSocket and
//! executes the typed commands of `mpanel-protocol` for the roles its server has.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") | Some("-V") => {
            println!("mpanel-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "mpanel-agent {}: enrollment and the daemon arrive with the fleet (issue 5)",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
    }
}
