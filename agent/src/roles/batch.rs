//! Commands of one role that arrive together, applied together (group commit): a burst of
//! orders sends a server many commands at once, and each would otherwise wait for the one
//! before it to run its check and reload on its own (`nginx -t` and a reload; `postmap` and
//! reloads). A command queues itself and takes its role's lock; whoever holds the lock
//! takes every queued command of its kind and applies them as one, answering each on its
//! own. The role decides what "as one" means and how a bad command is kept from taking the
//! others down (see the web and mail roles).
//!
//! Only commands that share the holder's configuration are taken together (one per process
//! in production; the roles' tests run several sandboxes in one process).

use std::sync::Mutex;

use mpanel_protocol::messages::Outcome;
use tokio::sync::oneshot;

use crate::host::{Failure, to_outcome};

/// A queued command: what it asks, the configuration it runs with, and its answer.
pub struct Waiting<C, T> {
    pub cmd: C,
    pub cfg: T,
    reply: oneshot::Sender<Outcome>,
}

impl<C, T> Waiting<C, T> {
    /// Answers the command (its task is gone only when the agent is stopping: nobody is
    /// left to tell).
    pub fn answer<O: serde::Serialize>(self, result: Result<O, Failure>) {
        let _ = self.reply.send(to_outcome(result));
    }

    /// Answers the command with `failure`.
    pub fn fail(self, failure: Failure) {
        self.answer::<()>(Err(failure));
    }
}

/// The commands of one kind waiting for their role's lock.
pub struct Queue<C, T> {
    waiting: Mutex<Vec<Waiting<C, T>>>,
}

impl<C: Clone, T: Clone + PartialEq> Queue<C, T> {
    pub const fn new() -> Self {
        Queue {
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// Queues `cmd`, takes `lock` and, holding it, hands every command queued for `cfg`
    /// (oldest first, ours among them unless a holder before us took and answered it) to
    /// `apply`, which must answer each. Returns our answer.
    pub async fn run<F, Fut>(
        &self,
        lock: &tokio::sync::Mutex<()>,
        cmd: &C,
        cfg: &T,
        io_code: &'static str,
        apply: F,
    ) -> Outcome
    where
        F: FnOnce(Vec<Waiting<C, T>>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (reply, answer) = oneshot::channel();
        self.lock().push(Waiting {
            cmd: cmd.clone(),
            cfg: cfg.clone(),
            reply,
        });
        {
            let _guard = lock.lock().await;
            let batch = self.take(cfg);
            if !batch.is_empty() {
                apply(batch).await;
            }
        }
        answer.await.unwrap_or_else(|_| {
            Outcome::error(
                io_code,
                "the agent stopped while the command was being applied",
                true,
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<C, T>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, cfg: &T) -> Vec<Waiting<C, T>> {
        let mut queue = self.lock();
        let (mine, others) = std::mem::take(&mut *queue)
            .into_iter()
            .partition(|w| w.cfg == *cfg);
        *queue = others;
        mine
    }
}
