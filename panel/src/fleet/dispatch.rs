//! The registry of this process's agent connections and of the commands it waits for.
//!
//! [`super::route::send`] is how the rest of the panel talks to a server; this module is its
//! in-memory half: who is connected here, which command ids were written to which
//! connection, and who waits for which outcome. The durable half (any process, any replica)
//! is `agent_commands` ([`super::commands`]).
//!
//! Invariants:
//! - At most one connection per server is registered here; registering a new one hands back
//!   the old one, which the hub closes with a Goodbye.
//! - A command is written at most once to one connection (`sent`): the reconnect re-send,
//!   a notification and the periodic look may all name it, and only the first writes it. A
//!   new connection starts with an empty set, so whatever was sent on a dead one goes again,
//!   with the same `command_id`; the agent's journal answers an id it knows with its first
//!   outcome, so re-sending never makes it act twice.
//! - A waiter is removed when its sender stops waiting (outcome, deadline, or the future
//!   dropped at shutdown): see [`WaitGuard`].
//! - Locks here are std mutexes held for a few map operations, never across an `.await`.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use mpanel_protocol::messages::{CommandEnvelope, Outcome, PanelMessage};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{tls::RevokedSerials, turns::ServerTurns};

/// What the hub's connection task is asked to do from outside.
#[derive(Debug)]
pub enum Outbound {
    Send(PanelMessage),
    /// Say Goodbye with this reason and close.
    Close(String),
}

/// A registered connection, as the rest of the panel sees it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub conn_id: u64,
    pub agent_id: Uuid,
    pub serial_hex: String,
    pub tx: mpsc::Sender<Outbound>,
}

struct Conn {
    handle: ConnHandle,
    /// Command ids written to this connection.
    sent: HashSet<Uuid>,
}

struct Waiter {
    server_id: Uuid,
    reply: Option<oneshot::Sender<Outcome>>,
    /// Kept here only (no row): an API command to an agent connected to this process.
    ephemeral: Option<CommandEnvelope>,
    sent: bool,
    accepted: bool,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<Uuid, Conn>,
    waiters: HashMap<Uuid, Waiter>,
}

/// Why a send has no outcome.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DispatchError {
    /// The agent was not connected to any panel process before the deadline.
    #[error("the server's agent is offline")]
    Offline,
    /// Delivered (perhaps accepted), but no result before the deadline.
    #[error("the agent did not answer in time (delivered: {delivered}, accepted: {accepted})")]
    Timeout { delivered: bool, accepted: bool },
    /// The command could not be recorded (or its outcome read) in PostgreSQL.
    #[error("the command could not be recorded: {0}")]
    Database(String),
    /// The panel is shutting down.
    #[error("the panel is shutting down")]
    Shutdown,
}

/// Who took an agent's result.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// A sender in this process that keeps no row: nothing more to do.
    Ephemeral,
    /// A sender in this process; the row must be completed too.
    Local,
    /// Nobody here: the row tells the sender, wherever it is.
    Nobody,
}

/// The panel's side of its agents in this process: connections, waiters, revoked serials.
pub struct Fleet {
    pub revoked: Arc<RevokedSerials>,
    /// This process among the panel's processes: the `sender` of its commands, in logs and
    /// in the presence record.
    pub replica: String,
    /// How many commands this process's jobs have in flight to each server.
    pub turns: ServerTurns,
    inner: Mutex<Inner>,
    next_conn: AtomicU64,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new()
    }
}

impl Fleet {
    pub fn new() -> Fleet {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "panel".into());
        Fleet {
            revoked: Arc::new(RevokedSerials::default()),
            replica: format!(
                "{host}-{}-{}",
                std::process::id(),
                &Uuid::new_v4().simple().to_string()[..8]
            ),
            turns: ServerTurns::default(),
            inner: Mutex::new(Inner::default()),
            next_conn: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts waiting for `command_id`'s outcome; the guard stops waiting when dropped.
    pub(super) fn wait_for(
        self: &Arc<Self>,
        server_id: Uuid,
        command_id: Uuid,
        ephemeral: Option<CommandEnvelope>,
    ) -> (WaitGuard, oneshot::Receiver<Outcome>) {
        let (reply, rx) = oneshot::channel();
        self.lock().waiters.insert(
            command_id,
            Waiter {
                server_id,
                reply: Some(reply),
                ephemeral,
                sent: false,
                accepted: false,
            },
        );
        let guard = WaitGuard {
            fleet: self.clone(),
            command_id,
        };
        (guard, rx)
    }

    /// Writes `envelope` to `server_id`'s connection here unless it already went there;
    /// true when it is (now) on that connection.
    pub fn deliver(&self, server_id: Uuid, envelope: &CommandEnvelope) -> bool {
        let mut inner = self.lock();
        let id = envelope.command_id;
        let Some(conn) = inner.conns.get_mut(&server_id) else {
            return false;
        };
        if conn.sent.contains(&id) {
            return true;
        }
        let msg = Outbound::Send(PanelMessage::Command(envelope.clone()));
        if conn.handle.tx.try_send(msg).is_err() {
            // A full queue: the periodic look sends it later.
            return false;
        }
        conn.sent.insert(id);
        if let Some(w) = inner.waiters.get_mut(&id) {
            w.sent = true;
        }
        true
    }

    /// Records that the hub wrote these ids to `conn_id` itself (the re-send at connect);
    /// returns those not already written to it.
    pub fn claim_for_resend(
        &self,
        server_id: Uuid,
        conn_id: u64,
        envelopes: Vec<CommandEnvelope>,
    ) -> Vec<CommandEnvelope> {
        let mut inner = self.lock();
        let Inner { conns, waiters } = &mut *inner;
        let Some(conn) = conns
            .get_mut(&server_id)
            .filter(|c| c.handle.conn_id == conn_id)
        else {
            return Vec::new();
        };
        envelopes
            .into_iter()
            .filter(|e| conn.sent.insert(e.command_id))
            .inspect(|e| {
                if let Some(w) = waiters.get_mut(&e.command_id) {
                    w.sent = true;
                }
            })
            .collect()
    }

    /// Registers a connection for `server_id`; returns the connection it replaces and the
    /// in-memory (API) commands waiting for this server. Commands with rows are the hub's to
    /// read from PostgreSQL.
    pub fn register(
        &self,
        server_id: Uuid,
        handle: ConnHandle,
    ) -> (Option<ConnHandle>, Vec<CommandEnvelope>) {
        let mut inner = self.lock();
        let old = inner.conns.insert(
            server_id,
            Conn {
                handle,
                sent: HashSet::new(),
            },
        );
        let mut resend: Vec<CommandEnvelope> = inner
            .waiters
            .values()
            .filter(|w| w.server_id == server_id)
            .filter_map(|w| w.ephemeral.clone())
            .collect();
        resend.sort_by_key(|e| e.issued_at);
        (old.map(|c| c.handle), resend)
    }

    /// Removes the registration if it is still `conn_id`'s; true when it was.
    pub fn unregister(&self, server_id: Uuid, conn_id: u64) -> bool {
        let mut inner = self.lock();
        match inner.conns.get(&server_id) {
            Some(c) if c.handle.conn_id == conn_id => {
                inner.conns.remove(&server_id);
                true
            }
            _ => false,
        }
    }

    pub fn is_connected(&self, server_id: Uuid) -> bool {
        self.lock().conns.contains_key(&server_id)
    }

    pub fn connected_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Of these commands, those whose server is connected here and that its connection has
    /// not had yet.
    pub fn unsent_here(&self, rows: Vec<(Uuid, Uuid)>) -> Vec<(Uuid, Uuid)> {
        let inner = self.lock();
        rows.into_iter()
            .filter(|(id, server)| {
                inner
                    .conns
                    .get(server)
                    .is_some_and(|c| !c.sent.contains(id))
            })
            .collect()
    }

    /// Ids this process waits for that have rows (their outcome may arrive through
    /// PostgreSQL).
    pub fn waiting_ids(&self) -> Vec<Uuid> {
        self.lock()
            .waiters
            .iter()
            .filter(|(_, w)| w.ephemeral.is_none() && w.reply.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Commands this process waits for.
    pub fn waiting_count(&self) -> usize {
        self.lock().waiters.len()
    }

    pub fn is_waiting(&self, command_id: Uuid) -> bool {
        self.lock().waiters.contains_key(&command_id)
    }

    /// The agent said it has the command; true when a sender here took note.
    pub fn accepted(&self, server_id: Uuid, command_id: Uuid) -> bool {
        match self.lock().waiters.get_mut(&command_id) {
            Some(w) if w.server_id == server_id => {
                w.accepted = true;
                true
            }
            _ => false,
        }
    }

    /// An agent's result, handed to the sender when it waits here.
    pub fn complete(&self, server_id: Uuid, command_id: Uuid, outcome: Outcome) -> Taken {
        let (reply, ephemeral) = {
            let mut inner = self.lock();
            match inner.waiters.get_mut(&command_id) {
                Some(w) if w.server_id == server_id => (w.reply.take(), w.ephemeral.is_some()),
                _ => (None, false),
            }
        };
        match reply {
            Some(reply) => {
                let _ = reply.send(outcome);
                if ephemeral {
                    Taken::Ephemeral
                } else {
                    Taken::Local
                }
            }
            None => Taken::Nobody,
        }
    }

    /// An outcome read from PostgreSQL for a sender here.
    pub fn resolve(&self, command_id: Uuid, outcome: Outcome) {
        let reply = self
            .lock()
            .waiters
            .get_mut(&command_id)
            .and_then(|w| w.reply.take());
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }

    /// What this process knows of a command it stops waiting for: (sent, accepted).
    fn forget(&self, command_id: Uuid) -> Option<(bool, bool)> {
        self.lock()
            .waiters
            .remove(&command_id)
            .map(|w| (w.sent, w.accepted))
    }

    /// Asks every connection of `agent_id` (or using one of `serials`) to close.
    pub fn disconnect(&self, agent_id: Option<Uuid>, serials: &[String], reason: &str) -> usize {
        let inner = self.lock();
        let mut n = 0;
        for conn in inner.conns.values() {
            let c = &conn.handle;
            if agent_id == Some(c.agent_id) || serials.contains(&c.serial_hex) {
                // A full channel means the task is stuck: it will notice its peer is silent.
                let _ = c.tx.try_send(Outbound::Close(reason.to_owned()));
                n += 1;
            }
        }
        n
    }
}

/// Stops waiting for a command when dropped (its sender returned, or was cancelled).
pub struct WaitGuard {
    fleet: Arc<Fleet>,
    command_id: Uuid,
}

impl WaitGuard {
    /// Stops waiting now; what this process knows: (sent here, accepted here).
    pub fn finish(self) -> (bool, bool) {
        self.fleet.forget(self.command_id).unwrap_or((false, false))
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.fleet.forget(self.command_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use mpanel_protocol::messages::{Ping, Text};

    fn envelope() -> CommandEnvelope {
        CommandEnvelope {
            command_id: Uuid::new_v4(),
            issued_at: Utc::now(),
            deadline_secs: 5,
            command: Ping {
                echo: Text::parse("hi").unwrap(),
            }
            .into(),
        }
    }

    fn conn(fleet: &Fleet) -> (ConnHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(4);
        let handle = ConnHandle {
            conn_id: fleet.next_conn_id(),
            agent_id: Uuid::new_v4(),
            serial_hex: "00".into(),
            tx,
        };
        (handle, rx)
    }

    #[tokio::test]
    async fn a_command_goes_once_per_connection_and_again_on_the_next() {
        let fleet = Arc::new(Fleet::new());
        let server = Uuid::new_v4();
        let env = envelope();
        let id = env.command_id;
        let (guard, rx) = fleet.wait_for(server, id, Some(env.clone()));
        // Nobody holds the agent here: nothing is written.
        assert!(!fleet.deliver(server, &env));

        let (first, mut first_rx) = conn(&fleet);
        let (old, resend) = fleet.register(server, first.clone());
        assert!(old.is_none());
        assert_eq!(
            resend.len(),
            1,
            "the in-memory command waits for this server"
        );
        let resend = fleet.claim_for_resend(server, first.conn_id, resend);
        assert_eq!(resend.len(), 1);
        // A notification or the periodic look naming it again writes nothing more.
        assert!(fleet.deliver(server, &env));
        assert!(first_rx.try_recv().is_err());
        assert!(
            fleet
                .claim_for_resend(server, first.conn_id, vec![env.clone()])
                .is_empty()
        );

        // A new connection has had nothing: the same id goes again.
        let (second, mut second_rx) = conn(&fleet);
        let (old, _) = fleet.register(server, second.clone());
        assert_eq!(old.map(|c| c.conn_id), Some(first.conn_id));
        assert!(
            !fleet.unregister(server, first.conn_id),
            "not the registered one"
        );
        assert!(fleet.deliver(server, &env));
        match second_rx.try_recv() {
            Ok(Outbound::Send(PanelMessage::Command(e))) => assert_eq!(e.command_id, id),
            other => panic!("expected the command, got {other:?}"),
        }

        assert_eq!(
            fleet.complete(Uuid::new_v4(), id, Outcome::error("x", "y", false)),
            Taken::Nobody,
            "another server's result is ignored"
        );
        assert!(fleet.accepted(server, id));
        assert_eq!(
            fleet.complete(server, id, Outcome::ok(&"pong").unwrap()),
            Taken::Ephemeral
        );
        assert!(rx.await.is_ok());
        assert_eq!(guard.finish(), (true, true));
        assert!(!fleet.is_waiting(id));
    }

    #[tokio::test]
    async fn a_dropped_sender_stops_waiting() {
        let fleet = Arc::new(Fleet::new());
        let (server, id) = (Uuid::new_v4(), Uuid::new_v4());
        let (guard, _rx) = fleet.wait_for(server, id, None);
        assert_eq!(fleet.waiting_ids(), vec![id], "a row-backed wait is listed");
        drop(guard);
        assert!(fleet.waiting_ids().is_empty());
        assert_eq!(
            fleet.complete(server, id, Outcome::error("x", "y", false)),
            Taken::Nobody
        );
    }
}
