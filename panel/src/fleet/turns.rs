//! Turns at a server: how many commands this process's jobs have in flight to one server's
//! agent at once (`JOB_MAX_PER_SERVER`).
//!
//! Why per server and not per worker: a job spends nearly all of its time waiting for its
//! agent's answer, holding no database connection, so the worker's own limit can be high;
//! what must stay bounded is the work queued on one agent (the web agent runs its commands
//! one at a time), so that one busy server cannot take every worker slot from the others.
//! A job waiting for its turn holds no active worker slot ([`crate::jobs::dispatcher::Slot`]).
//!
//! Invariants:
//! - At most `cap` [`Turn`]s of one server exist at once in this process; waiters are served
//!   in order (tokio's semaphore is fair).
//! - A server's entry lives while a turn of it is held or awaited, and is removed with the
//!   last one, so the map holds only busy servers.
//! - The lock is a std mutex held for a map operation, never across an `.await`.
//! - The cap is per process: N worker processes may have N × cap commands in flight to one
//!   server (the agent's journal, not this, is what keeps a command from acting twice).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

type Servers = Arc<Mutex<HashMap<Uuid, Arc<Semaphore>>>>;

/// The turns of every server this process's jobs are sending to.
#[derive(Default)]
pub struct ServerTurns {
    servers: Servers,
}

/// One command's turn at a server; the next waiter goes when it is dropped.
pub struct Turn {
    permit: Option<OwnedSemaphorePermit>,
    server: Uuid,
    servers: Servers,
}

impl ServerTurns {
    /// A turn at `server` (at most `cap` at once), waiting for one when none is free.
    pub async fn take(&self, server: Uuid, cap: usize) -> Turn {
        let semaphore = {
            let mut servers = self.lock();
            servers
                .entry(server)
                .or_insert_with(|| Arc::new(Semaphore::new(cap.max(1))))
                .clone()
        };
        let permit = semaphore
            .acquire_owned()
            .await
            .expect("a server's semaphore is never closed");
        Turn {
            permit: Some(permit),
            server,
            servers: self.servers.clone(),
        }
    }

    /// How many servers have a turn held or awaited (for tests and logs).
    pub fn busy_servers(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Semaphore>>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // The permit (and its reference to the semaphore) goes first; then, under the lock
        // that every new reference is taken under, the map's reference is the last one only
        // if nobody holds or awaits a turn of this server.
        drop(self.permit.take());
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        if servers
            .get(&self.server)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            servers.remove(&self.server);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_server_gets_at_most_its_cap_and_others_are_not_held_up() {
        let turns = ServerTurns::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = turns.take(a, 2).await;
        let second = turns.take(a, 2).await;
        // Another server is not held up by a's.
        let other = turns
            .take(b, 2)
            .now_or_never()
            .expect("b's turn is free at once");

        let mut third = Box::pin(turns.take(a, 2));
        assert!(
            (&mut third).now_or_never().is_none(),
            "a third turn at a waits for one of two"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("a freed turn goes to the waiter");
        assert_eq!(turns.busy_servers(), 2);
        drop((second, third, other));
        assert_eq!(turns.busy_servers(), 0, "idle servers leave the map");
    }
}
