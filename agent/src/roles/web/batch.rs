//! Sites created together: a burst of orders sends a web server many [`CreateSite`]s at
//! once, and each would otherwise wait for the one before it to run `nginx -t` and reload
//! nginx (and php-fpm) on its own. Instead, a command queues itself and takes the role's
//! lock; whoever holds the lock takes every queued create and applies them as one:
//!
//! 1. each site's user, document root, pool and vhost in turn ([`prepare`]); a site that
//!    fails there answers alone and is put back, the others go on;
//! 2. one `nginx -t` for all of them, then one php-fpm reload and one nginx reload;
//! 3. each command answers on its own, with its own `changed`.
//!
//! (The queue and the lock: `roles::batch`.) A bad one never takes the others down: when the shared check fails, every site is put
//! back and each is made again with a check of its own (as if they had come one at a
//! time), so only the sites nginx refuses fail. A failed reload fails every site of the
//! batch, as it would have failed each alone; their files are put back and nginx is
//! reloaded on what was there before.

use mpanel_protocol::{messages::Outcome, web::CreateSite};

use super::{IO, LOCK, Prepared, Site, prepare, reload_after_rollback};
use crate::{
    config::WebConfig,
    host::{Failure, run},
    roles::batch::{Queue, Waiting},
};

type Pending = Waiting<CreateSite, WebConfig>;

static QUEUE: Queue<CreateSite, WebConfig> = Queue::new();

pub(super) async fn create_site(cmd: &CreateSite, cfg: &WebConfig) -> Outcome {
    QUEUE
        .run(&LOCK, cmd, cfg, IO, |batch| apply(cfg, batch))
        .await
}

fn site<'a>(cfg: &'a WebConfig, cmd: &'a CreateSite) -> Site<'a> {
    Site::new(cfg, &cmd.domain, &cmd.system_user, &cmd.php_version)
}

async fn apply(cfg: &WebConfig, batch: Vec<Pending>) {
    let size = batch.len();
    let mut ready = Vec::with_capacity(size);
    for p in batch {
        match prepare(&site(cfg, &p.cmd)).await {
            Ok(prepared) => ready.push((p, prepared)),
            Err(f) => p.fail(f),
        }
    }
    if ready.is_empty() {
        return;
    }
    if size > 1 {
        tracing::debug!(sites = ready.len(), "creating sites together");
    }
    let checked = if ready.iter().any(|(_, p)| p.vhost_changed) {
        run("nginx_config_invalid", &cfg.nginx_test, false).await
    } else {
        Ok(())
    };
    let ready = match checked {
        Ok(()) => ready,
        Err(f) if ready.len() == 1 => {
            let (p, prepared) = ready.pop().expect("one site");
            prepared.changes.revert(&site(cfg, &p.cmd)).await;
            p.fail(f);
            return;
        }
        Err(f) => {
            tracing::info!(
                sites = ready.len(),
                "nginx refused the sites made together ({}); checking each alone",
                f.message
            );
            one_by_one(cfg, ready).await
        }
    };
    reload(cfg, ready).await;
}

/// Puts every site back, then makes each again with its own `nginx -t`: the ones nginx
/// refuses fail and are put back, the rest are returned for the reload.
async fn one_by_one(cfg: &WebConfig, ready: Vec<(Pending, Prepared)>) -> Vec<(Pending, Prepared)> {
    let mut waiting = Vec::with_capacity(ready.len());
    for (p, prepared) in ready.into_iter().rev() {
        prepared.changes.revert(&site(cfg, &p.cmd)).await;
        waiting.push(p);
    }
    waiting.reverse();
    let mut kept = Vec::with_capacity(waiting.len());
    for p in waiting {
        let s = site(cfg, &p.cmd);
        let prepared = match prepare(&s).await {
            Ok(prepared) => prepared,
            Err(f) => {
                p.fail(f);
                continue;
            }
        };
        if prepared.vhost_changed
            && let Err(f) = run("nginx_config_invalid", &cfg.nginx_test, false).await
        {
            prepared.changes.revert(&s).await;
            p.fail(f);
            continue;
        }
        kept.push((p, prepared));
    }
    kept
}

/// One php-fpm reload and one nginx reload for every site checked; each site answers.
async fn reload(cfg: &WebConfig, ready: Vec<(Pending, Prepared)>) {
    let reloaded = async {
        // Each PHP version has its own php-fpm: one reload per version with a new pool.
        if let Some(reload) = &cfg.php_fpm_reload {
            let mut done = Vec::new();
            for (p, prepared) in &ready {
                if prepared.pool_changed && !done.contains(&p.cmd.php_version) {
                    run("reload_failed", &site(cfg, &p.cmd).php_argv(reload), true).await?;
                    done.push(p.cmd.php_version.clone());
                }
            }
        }
        if ready.iter().any(|(_, p)| p.vhost_changed)
            && let Some(reload) = &cfg.nginx_reload
        {
            run("reload_failed", reload, true).await?;
        }
        Ok::<(), Failure>(())
    }
    .await;
    match reloaded {
        Ok(()) => {
            for (p, prepared) in ready {
                let output = prepared.output(&site(cfg, &p.cmd));
                p.answer(Ok(output));
            }
        }
        Err(f) => {
            let mut files_back = false;
            for (p, prepared) in ready.into_iter().rev() {
                files_back |= prepared.changes.revert(&site(cfg, &p.cmd)).await;
                p.fail(f.clone());
            }
            if files_back {
                reload_after_rollback(cfg).await;
            }
        }
    }
}
