//! The `mpanel` and `mpanel-agent` binaries the demo runs. `cargo run -p mpanel-dev` builds
//! only this binary, so it first builds the other two with the same cargo and profile, and
//! points the harness at them (`MPANEL_BIN_DIR`, the directory of this executable).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// Builds the panel and the agent unless `build` is false, then sets `MPANEL_BIN_DIR`.
/// Must run while this is the only thread (it sets an environment variable).
pub fn prepare(build: bool) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MPANEL_BIN_DIR") {
        let dir = PathBuf::from(dir);
        check(&dir)?;
        return Ok(dir);
    }
    let exe = std::env::current_exe().context("locate this executable")?;
    let dir = exe
        .parent()
        .context("the executable's directory")?
        .to_owned();
    if build {
        cargo_build(&dir)?;
    }
    check(&dir)?;
    // SAFETY: called before the runtime starts, while this is the only thread.
    unsafe { std::env::set_var("MPANEL_BIN_DIR", &dir) };
    Ok(dir)
}

/// `$CARGO build -p mpanel -p mpanel-agent -p mpanel-dev` in the profile this executable was
/// built in (`target/release` → `--release`), into the same target directory. Naming this
/// package too keeps the features of every dependency those of `cargo run -p mpanel-dev`
/// (see Cargo.toml), so nothing already built is built again and this binary is up to date.
fn cargo_build(bin_dir: &Path) -> anyhow::Result<()> {
    // `cargo run` sets CARGO to the cargo that runs us; started by hand, use the one on PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "-p",
        "mpanel",
        "-p",
        "mpanel-agent",
        "-p",
        "mpanel-dev",
    ]);
    let profile = bin_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    // `cargo run` describes this package to us in these variables; build scripts that watch
    // one (ring's watches CARGO_MANIFEST_DIR) would otherwise rerun and rebuild their crate.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&*name);
        }
    }
    if let Some(target_dir) = bin_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    // From the workspace, wherever we were started.
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!(
        "mpanel dev: building mpanel and mpanel-agent ({profile} profile): cargo {}",
        args.join(" ")
    );
    let status = cmd
        .status()
        .with_context(|| format!("run {}", Path::new(&cargo).display()))?;
    if !status.success() {
        bail!("building mpanel and mpanel-agent failed ({status}); see cargo's output above");
    }
    Ok(())
}

fn check(dir: &Path) -> anyhow::Result<()> {
    for bin in ["mpanel", "mpanel-agent"] {
        let path = dir.join(bin);
        if !path.exists() {
            bail!(
                "{} is missing: build it with `cargo build -p mpanel -p mpanel-agent` (same \
                 profile as mpanel-dev), drop --no-build, or set MPANEL_BIN_DIR",
                path.display()
            );
        }
    }
    Ok(())
}
