//! The open-files limit. The API, the fleet hub (one descriptor per agent) and the database
//! pool share it; systemd's default soft limit of 1,024 is far too low for a fleet, so the
//! panel raises its soft limit to the hard one (the units set `LimitNOFILE`) and says what
//! it got.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft RLIMIT_NOFILE to the hard limit and logs both; a failure is logged, not
/// fatal (the panel still runs, with less headroom).
pub fn raise_open_files() {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => tracing::warn!(
                error = %e, soft, hard,
                "could not raise the open-files limit; agents and requests share {soft}"
            ),
        },
        Ok((soft, hard)) => tracing::info!(soft, hard, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not read the open-files limit"),
    }
}
