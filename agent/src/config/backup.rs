//! The `[backup]` section: where the backup role keeps archives and dumps, how many, and the
//! commands it runs.

use std::path::PathBuf;

use serde::Deserialize;

use super::checks::{abs_path, argv};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    archive_dir: Option<PathBuf>,
    keep: Option<u32>,
    sites_root: Option<PathBuf>,
    tar: Option<PathBuf>,
    zstd: Option<PathBuf>,
    pg_dump: Option<Vec<String>>,
}

/// The `[backup]` section, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// Archives are `archive_dir/<kind>/<target>/<UTC timestamp>.<ext>`.
    pub archive_dir: PathBuf,
    /// How many archives of one target are kept (the newest); 1 to 1000.
    pub keep: u32,
    /// A site's files are `sites_root/<system user>` (the web role's homes, as seen on
    /// this host's file system).
    pub sites_root: PathBuf,
    pub tar: PathBuf,
    pub zstd: PathBuf,
    /// argv prefix of pg_dump (connection options included); the database name is appended.
    pub pg_dump: Vec<String>,
}

pub(super) fn parse(raw: RawBackup, problems: &mut Vec<String>) -> BackupConfig {
    let p = problems;
    let archive_dir = abs_path(
        p,
        "backup.archive_dir",
        raw.archive_dir,
        "/var/backups/mpanel-agent",
    );
    let keep = raw.keep.unwrap_or(7);
    if !(1..=1000).contains(&keep) {
        p.push("backup.keep: must be between 1 and 1000".into());
    }
    let sites_root = abs_path(p, "backup.sites_root", raw.sites_root, "/home");
    let tar = abs_path(p, "backup.tar", raw.tar, "/usr/bin/tar");
    let zstd = abs_path(p, "backup.zstd", raw.zstd, "/usr/bin/zstd");
    let pg_dump = argv(
        p,
        "backup.pg_dump",
        raw.pg_dump,
        &["/usr/bin/pg_dump"],
        false,
    )
    .unwrap_or_default();
    BackupConfig {
        archive_dir,
        keep,
        sites_root,
        tar,
        zstd,
        pg_dump,
    }
}
