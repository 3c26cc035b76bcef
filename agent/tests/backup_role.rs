//! The backup role in a temp-dir sandbox: the real tar and zstd archive a site directory,
//! the real pg_dump dumps a scratch database of the local PostgreSQL (127.0.0.1:5432, user
//! postgres, trust auth, as `.ci/run` sets it up), and `pg_restore --list` reads the dump.
//!
//! The executor is called as a library (`executors::execute`, the same entry the daemon
//! uses, role checks included).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command as Process, Stdio},
};

use mpanel_agent::{
    config::{AgentConfig, BackupConfig},
    executors::execute,
};
use mpanel_protocol::{
    SystemUser,
    backup::{BackupDatabase, BackupOutput, BackupSite, DatabaseName},
    messages::{AgentCommand, Command, Outcome},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

struct Sandbox {
    dir: tempfile::TempDir,
    config: AgentConfig,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sites")).unwrap();
        let mut config = AgentConfig::parse("roles = [\"backup\"]").unwrap();
        config.backup = BackupConfig {
            archive_dir: dir.path().join("archives"),
            keep: 3,
            sites_root: dir.path().join("sites"),
            tar: PathBuf::from("/usr/bin/tar"),
            zstd: PathBuf::from("/usr/bin/zstd"),
            pg_dump: vec![
                "/usr/bin/pg_dump".into(),
                "--host=127.0.0.1".into(),
                "--port=5432".into(),
                "--username=postgres".into(),
                "--no-password".into(),
            ],
        };
        for tool in ["/usr/bin/tar", "/usr/bin/zstd"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install tar and zstd"
            );
        }
        Sandbox { dir, config }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A site `sites/<user>` with a few files, one in a subdirectory.
    fn make_site(&self, user: &str) {
        let home = self.path(&format!("sites/{user}"));
        std::fs::create_dir_all(home.join("public_html/assets")).unwrap();
        std::fs::write(home.join("public_html/index.php"), "<?php echo 'hi';").unwrap();
        std::fs::write(home.join("public_html/assets/app.css"), "body{}").unwrap();
        std::fs::write(home.join("notes.txt"), "x".repeat(10_000)).unwrap();
    }

    async fn run<C: AgentCommand>(&self, cmd: C) -> Outcome {
        execute(&cmd.into(), &self.config).await
    }

    async fn site(&self, target: Uuid, user: &str) -> Outcome {
        self.run(BackupSite {
            target_id: target,
            system_user: SystemUser::parse(user).unwrap(),
        })
        .await
    }

    /// Every file below the archive directory (partials included), relative, sorted.
    fn archive_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.path("archives"), &self.path("archives"), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

fn ok(outcome: Outcome) -> BackupOutput {
    match outcome {
        Outcome::Ok { data } => serde_json::from_value(data).expect("a BackupOutput"),
        Outcome::Error { code, message, .. } => panic!("{code}: {message}"),
    }
}

fn err(outcome: Outcome) -> (String, String, bool) {
    match outcome {
        Outcome::Error {
            code,
            message,
            retryable,
        } => (code.into_string(), message.into_string(), retryable),
        Outcome::Ok { data } => panic!("expected an error, got {data}"),
    }
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `zstd -dc archive | tar -tf -`, sorted.
fn list_archive(path: &Path) -> Vec<String> {
    let mut zstd = Process::new("/usr/bin/zstd")
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Process::new("/usr/bin/tar")
        .args(["-tf", "-"])
        .stdin(zstd.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(zstd.wait().unwrap().success(), "zstd -dc failed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_site_becomes_a_complete_archive_with_its_size_and_hash() {
    let sb = Sandbox::new();
    sb.make_site("examplecom");
    let target = Uuid::new_v4();

    let out = ok(sb.site(target, "examplecom").await);

    let path = PathBuf::from(&out.path);
    let dir = sb.path(&format!("archives/site/{target}"));
    assert_eq!(path.parent().unwrap(), dir);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with(".tar.zst") && name.len() == 31, "{name}");
    assert_eq!(out.size_bytes, std::fs::metadata(&path).unwrap().len());
    assert!(out.size_bytes > 0);
    assert_eq!(out.sha256, sha256_hex(&path));
    assert_eq!(out.sha256.len(), 64);
    assert!(out.pruned.is_empty());
    assert_eq!(mode(&path), 0o600);
    for d in ["archives/site", &format!("archives/site/{target}")] {
        assert_eq!(mode(&sb.path(d)), 0o700, "{d}");
    }
    assert_eq!(
        list_archive(&path),
        [
            "examplecom/",
            "examplecom/notes.txt",
            "examplecom/public_html/",
            "examplecom/public_html/assets/",
            "examplecom/public_html/assets/app.css",
            "examplecom/public_html/index.php",
        ]
    );
    // Only the archive: no partial file left.
    assert_eq!(
        sb.archive_files(),
        [format!("site/{target}/{name}")],
        "{:?}",
        sb.archive_files()
    );
}

#[tokio::test]
async fn runs_keep_the_newest_archives_and_touch_nothing_else() {
    let sb = Sandbox::new();
    sb.make_site("examplecom");
    let target = Uuid::new_v4();
    let dir = sb.path(&format!("archives/site/{target}"));
    // Things in the target directory that are not this role's archives.
    ok(sb.site(target, "examplecom").await);
    let outside = sb.path("precious.txt");
    std::fs::write(&outside, "keep me").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("20000101T000000.000000Z.tar.zst")).unwrap();
    std::fs::write(dir.join("notes.tar.zst"), "operator's file").unwrap();
    std::fs::write(dir.join("19990101T000000Z.tar.zst"), "other naming").unwrap();
    // Another target's archives are left alone.
    sb.make_site("otheruser");
    let other = Uuid::new_v4();
    let other_archive = ok(sb.site(other, "otheruser").await).path;

    let mut made = Vec::new();
    let mut pruned = Vec::new();
    for _ in 0..5 {
        let out = ok(sb.site(target, "examplecom").await);
        made.push(out.path);
        pruned.extend(out.pruned);
    }

    let mut archives: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with("Z.tar.zst") && !p.contains("19990101"))
        .collect();
    archives.sort();
    assert_eq!(archives, made[2..], "exactly the 3 newest are kept");
    // 6 archives were made (the first before the loop): 3 pruned, reported as they went.
    assert_eq!(pruned.len(), 3, "{pruned:?}");
    assert!(pruned.contains(&made[0]) && pruned.contains(&made[1]));
    for p in &pruned {
        assert!(!Path::new(p).exists(), "{p}");
    }
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
    assert!(
        std::fs::symlink_metadata(dir.join("20000101T000000.000000Z.tar.zst"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(dir.join("notes.tar.zst").exists());
    assert!(dir.join("19990101T000000Z.tar.zst").exists());
    assert!(Path::new(&other_archive).exists());
}

#[tokio::test]
async fn a_missing_or_symlinked_site_is_refused_without_leaving_anything() {
    let sb = Sandbox::new();
    let target = Uuid::new_v4();

    let (code, message, retryable) = err(sb.site(target, "ghost").await);
    assert_eq!(code, "backup_target_missing", "{message}");
    assert!(!retryable);
    assert!(message.contains("ghost"), "{message}");

    // A site directory that points elsewhere (say, at /etc) is not followed.
    let elsewhere = sb.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("secret"), "s").unwrap();
    std::os::unix::fs::symlink(&elsewhere, sb.path("sites/linked")).unwrap();
    let (code, message, retryable) = err(sb.site(target, "linked").await);
    assert_eq!(code, "backup_unsafe_path", "{message}");
    assert!(!retryable);

    // A file where the site directory should be.
    std::fs::write(sb.path("sites/afile"), "x").unwrap();
    let (code, _, _) = err(sb.site(target, "afile").await);
    assert_eq!(code, "backup_unsafe_path");

    assert!(sb.archive_files().is_empty(), "{:?}", sb.archive_files());
}

#[tokio::test]
async fn a_failing_tar_leaves_no_file_and_earlier_archives_stay() {
    let mut sb = Sandbox::new();
    sb.make_site("examplecom");
    let target = Uuid::new_v4();
    let first = ok(sb.site(target, "examplecom").await);
    let before = sb.archive_files();

    sb.config.backup.tar = PathBuf::from("/bin/false");
    let (code, message, retryable) = err(sb.site(target, "examplecom").await);
    assert_eq!(code, "archive_failed", "{message}");
    assert!(retryable);
    assert_eq!(sb.archive_files(), before);
    assert_eq!(first.sha256, sha256_hex(Path::new(&first.path)));

    // A compressor that fails: tar fails with it, nothing is left either.
    sb.config.backup.tar = PathBuf::from("/usr/bin/tar");
    sb.config.backup.zstd = PathBuf::from("/bin/false");
    let (code, message, _) = err(sb.site(target, "examplecom").await);
    assert_eq!(code, "archive_failed", "{message}");
    assert_eq!(sb.archive_files(), before);

    // A program that does not exist.
    sb.config.backup.zstd = PathBuf::from("/usr/bin/zstd");
    sb.config.backup.tar = sb.path("no-such-tar");
    let out = sb.site(target, "examplecom").await;
    let (code, _, retryable) = err(out);
    assert_eq!(
        code, "role_unavailable",
        "the role check names missing tools first"
    );
    assert!(!retryable);
    assert_eq!(sb.archive_files(), before);
}

#[tokio::test]
async fn a_partial_file_of_a_killed_run_is_removed_by_the_next_run() {
    let sb = Sandbox::new();
    sb.make_site("examplecom");
    let target = Uuid::new_v4();
    let dir = sb.path(&format!("archives/site/{target}"));
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join(".20200101T000000.000000Z.tar.zst.partial");
    std::fs::write(&stale, "half an archive").unwrap();
    let unrelated = dir.join(".hidden");
    std::fs::write(&unrelated, "mine").unwrap();

    let out = ok(sb.site(target, "examplecom").await);

    assert!(!stale.exists());
    assert!(unrelated.exists());
    assert!(Path::new(&out.path).exists());
}

#[tokio::test]
async fn refused_without_the_backup_role() {
    let mut sb = Sandbox::new();
    sb.make_site("examplecom");
    sb.config.roles = vec![mpanel_protocol::messages::Role::Web];
    let (code, _, retryable) = err(sb.site(Uuid::new_v4(), "examplecom").await);
    assert_eq!(code, "role_not_served");
    assert!(!retryable);
    assert!(sb.archive_files().is_empty());
}

#[test]
fn tampered_commands_never_reach_the_executor() {
    let json = serde_json::to_string(&Command::from(BackupSite {
        target_id: Uuid::nil(),
        system_user: SystemUser::parse("examplecom").unwrap(),
    }))
    .unwrap();
    for bad in ["../etc", "a.com;rm -rf /", "a\\nb", "exаmplecom", "."] {
        let tampered = json.replacen("examplecom", bad, 1);
        assert!(
            serde_json::from_str::<Command>(&tampered).is_err(),
            "{tampered}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// pg_dump
// ---------------------------------------------------------------------------------------

fn psql(db: &str, sql: &str) -> std::process::Output {
    Process::new("psql")
        .args([
            "--host=127.0.0.1",
            "--port=5432",
            "--username=postgres",
            "--no-password",
            "--set=ON_ERROR_STOP=1",
            "--quiet",
            "--dbname",
            db,
            "--command",
            sql,
        ])
        .output()
        .expect("run psql (install postgresql-client)")
}

/// A scratch database, dropped when the test ends (even on a failed assertion).
struct ScratchDb(String);

impl ScratchDb {
    fn create() -> ScratchDb {
        let name = format!("mpanel_backup_{}", Uuid::new_v4().simple());
        let out = psql("postgres", &format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "PostgreSQL on 127.0.0.1:5432 (user postgres, trust) is needed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = psql(
            &name,
            "CREATE TABLE orders (id int PRIMARY KEY, note text);
             INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 100) g;",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ScratchDb(name)
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0),
        );
    }
}

#[tokio::test]
async fn a_database_becomes_a_dump_that_pg_restore_reads() {
    let sb = Sandbox::new();
    let scratch = ScratchDb::create();
    let target = Uuid::new_v4();
    let cmd = BackupDatabase {
        target_id: target,
        database: DatabaseName::parse(&scratch.0).unwrap(),
    };

    let out = ok(sb.run(cmd.clone()).await);

    let path = PathBuf::from(&out.path);
    assert_eq!(
        path.parent().unwrap(),
        sb.path(&format!("archives/database/{target}/{}", scratch.0))
    );
    assert!(out.path.ends_with("Z.dump"), "{}", out.path);
    assert!(out.size_bytes > 0);
    assert_eq!(out.size_bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(out.sha256, sha256_hex(&path));
    assert_eq!(mode(&path), 0o600);
    let listed = Process::new("pg_restore")
        .arg("--list")
        .arg(&path)
        .output()
        .expect("run pg_restore");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let toc = String::from_utf8_lossy(&listed.stdout);
    assert!(toc.contains("TABLE public orders"), "{toc}");
    assert!(toc.contains("TABLE DATA public orders"), "{toc}");

    // Runs are pruned per database like sites.
    for _ in 0..3 {
        ok(sb.run(cmd.clone()).await);
    }
    assert_eq!(sb.archive_files().len(), 3, "{:?}", sb.archive_files());
    assert!(!path.exists(), "the oldest dump was pruned");
}

#[tokio::test]
async fn a_missing_database_or_a_failing_pg_dump_leaves_no_file() {
    let mut sb = Sandbox::new();
    let target = Uuid::new_v4();
    let ghost = format!("mpanel_absent_{}", Uuid::new_v4().simple());
    let cmd = BackupDatabase {
        target_id: target,
        database: DatabaseName::parse(&ghost).unwrap(),
    };
    let (code, message, retryable) = err(sb.run(cmd.clone()).await);
    assert_eq!(code, "backup_target_missing", "{message}");
    assert!(!retryable);
    assert!(sb.archive_files().is_empty(), "{:?}", sb.archive_files());

    sb.config.backup.pg_dump = vec!["/bin/false".into()];
    let (code, _, retryable) = err(sb.run(cmd).await);
    assert_eq!(code, "dump_failed");
    assert!(retryable);
    assert!(sb.archive_files().is_empty(), "{:?}", sb.archive_files());
}
