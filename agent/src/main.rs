//! `mpanel-agent`: the daemon on each server. Everything lives in the library; this only
//! hands over the process's arguments and exit code.

fn main() -> std::process::ExitCode {
    mpanel_agent::main()
}
