//! The registry of live agent connections and the command dispatch on top of it.
//!
//! [`Fleet::send`] is how the rest of the panel talks to a server: it hands a typed command
//! to that server's agent and waits, bounded by a deadline, for its [`Outcome`].
//!
//! Invariants:
//! - At most one connection per server is registered; registering a new one hands back the
//!   old one, which the hub closes with a Goodbye.
//! - A command stays pending (here, in memory) until its result arrives or its deadline
//!   passes, whichever is first. Whenever a connection for its server registers, every
//!   pending command of that server is (re-)sent with the same `command_id`: one that never
//!   left (the agent was offline) and one that left on a connection that died before the
//!   result. The agent's journal answers a known id with its first outcome, so re-sending
//!   never makes it act twice.
//! - Locks here are std mutexes held for a few map operations, never across an `.await`.
//!
//! **Several panel replicas.** Only the replica holding an agent's WebSocket can deliver to
//! it. Out of scope for now; the way to do it: each replica records `server_id → replica`
//! in Redis next to the presence key, and `send` on another replica publishes the envelope
//! on that replica's Redis stream (`fleet:cmd:<replica>`) and awaits the outcome on a reply
//! key/channel named by the command id; the owning replica consumes its stream and feeds
//! `send` locally. Pending commands of an offline agent would be kept in Redis (or the jobs
//! table, which already is the truth for provisioning) so that whichever replica the agent
//! reconnects to re-sends them.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use mpanel_protocol::messages::{Command, CommandEnvelope, Outcome, PanelMessage};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::tls::RevokedSerials;

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

struct Pending {
    server_id: Uuid,
    envelope: CommandEnvelope,
    reply: Option<oneshot::Sender<Outcome>>,
    /// The connection it was last written to, if any.
    sent_on: Option<u64>,
    accepted: bool,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<Uuid, ConnHandle>,
    pending: HashMap<Uuid, Pending>,
}

/// Why [`Fleet::send`] has no outcome.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DispatchError {
    /// The agent was not connected at any moment before the deadline.
    #[error("the server's agent is offline")]
    Offline,
    /// Delivered (perhaps accepted), but no result before the deadline.
    #[error("the agent did not answer in time (delivered: {delivered}, accepted: {accepted})")]
    Timeout { delivered: bool, accepted: bool },
    /// The panel is shutting down.
    #[error("the panel is shutting down")]
    Shutdown,
}

/// The panel's side of its agents: connections, pending commands, revoked serials.
pub struct Fleet {
    pub revoked: Arc<RevokedSerials>,
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
        Fleet {
            revoked: Arc::new(RevokedSerials::default()),
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

    /// Sends `command` to `server_id`'s agent and waits for its outcome until `deadline`.
    /// An offline agent has until the deadline to connect; a command whose connection died
    /// is re-sent (same id) on the next one.
    pub async fn send(
        &self,
        server_id: Uuid,
        command: impl Into<Command>,
        deadline: Duration,
    ) -> Result<Outcome, DispatchError> {
        let command_id = Uuid::new_v4();
        let envelope = CommandEnvelope {
            command_id,
            issued_at: Utc::now(),
            deadline_secs: u32::try_from(deadline.as_secs().max(1)).unwrap_or(u32::MAX),
            command: command.into(),
        };
        let (reply, rx) = oneshot::channel();
        {
            let mut inner = self.lock();
            let mut sent_on = None;
            if let Some(conn) = inner.conns.get(&server_id)
                && conn
                    .tx
                    .try_send(Outbound::Send(PanelMessage::Command(envelope.clone())))
                    .is_ok()
            {
                sent_on = Some(conn.conn_id);
            }
            inner.pending.insert(
                command_id,
                Pending {
                    server_id,
                    envelope,
                    reply: Some(reply),
                    sent_on,
                    accepted: false,
                },
            );
        }
        if self
            .lock()
            .pending
            .get(&command_id)
            .is_some_and(|p| p.sent_on.is_none())
        {
            tracing::info!(%server_id, %command_id, "command waiting for the agent to connect");
        } else {
            tracing::debug!(%server_id, %command_id, "command sent to the agent");
        }
        let result = tokio::time::timeout(deadline, rx).await;
        let left = self.lock().pending.remove(&command_id);
        match result {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(DispatchError::Shutdown),
            Err(_) => match left {
                Some(p) if p.sent_on.is_some() => Err(DispatchError::Timeout {
                    delivered: true,
                    accepted: p.accepted,
                }),
                _ => Err(DispatchError::Offline),
            },
        }
    }

    /// Registers a connection for `server_id`; returns the connection it replaces and the
    /// commands to (re-)send on the new one.
    pub fn register(
        &self,
        server_id: Uuid,
        conn: ConnHandle,
    ) -> (Option<ConnHandle>, Vec<CommandEnvelope>) {
        let mut inner = self.lock();
        let conn_id = conn.conn_id;
        let old = inner.conns.insert(server_id, conn);
        let mut resend: Vec<CommandEnvelope> = inner
            .pending
            .values_mut()
            .filter(|p| p.server_id == server_id)
            .map(|p| {
                p.sent_on = Some(conn_id);
                p.envelope.clone()
            })
            .collect();
        resend.sort_by_key(|e| e.issued_at);
        (old, resend)
    }

    /// Removes the registration if it is still `conn_id`'s; true when it was.
    pub fn unregister(&self, server_id: Uuid, conn_id: u64) -> bool {
        let mut inner = self.lock();
        match inner.conns.get(&server_id) {
            Some(c) if c.conn_id == conn_id => {
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

    /// The agent said it has the command.
    pub fn accepted(&self, server_id: Uuid, command_id: Uuid) {
        if let Some(p) = self.lock().pending.get_mut(&command_id)
            && p.server_id == server_id
        {
            p.accepted = true;
        }
    }

    /// The agent's result; ignored when nobody waits (late, or another server's id).
    pub fn complete(&self, server_id: Uuid, command_id: Uuid, outcome: Outcome) -> bool {
        let reply = {
            let mut inner = self.lock();
            match inner.pending.get_mut(&command_id) {
                Some(p) if p.server_id == server_id => p.reply.take(),
                _ => None,
            }
        };
        match reply {
            Some(reply) => reply.send(outcome).is_ok(),
            None => false,
        }
    }

    /// Asks every connection of `agent_id` (or using one of `serials`) to close.
    pub fn disconnect(&self, agent_id: Option<Uuid>, serials: &[String], reason: &str) -> usize {
        let inner = self.lock();
        let mut n = 0;
        for conn in inner.conns.values() {
            if agent_id == Some(conn.agent_id) || serials.contains(&conn.serial_hex) {
                // A full channel means the task is stuck: it will notice its peer is silent.
                let _ = conn.tx.try_send(Outbound::Close(reason.to_owned()));
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpanel_protocol::messages::{Ping, Text};

    fn ping() -> Ping {
        Ping {
            echo: Text::parse("hi").unwrap(),
        }
    }

    #[tokio::test]
    async fn offline_commands_wait_and_are_sent_on_connect() {
        let fleet = Arc::new(Fleet::new());
        let server = Uuid::new_v4();

        let err = fleet
            .send(server, ping(), Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(err, DispatchError::Offline);

        let f = fleet.clone();
        let waiting =
            tokio::spawn(async move { f.send(server, ping(), Duration::from_secs(5)).await });
        // The command is pending before the agent connects.
        while fleet.lock().pending.is_empty() {
            tokio::task::yield_now().await;
        }
        let (tx, _rx) = mpsc::channel(4);
        let conn = ConnHandle {
            conn_id: fleet.next_conn_id(),
            agent_id: Uuid::new_v4(),
            serial_hex: "00".into(),
            tx,
        };
        let (old, resend) = fleet.register(server, conn.clone());
        assert!(old.is_none());
        assert_eq!(resend.len(), 1);
        let id = resend[0].command_id;
        // A reconnect re-sends the same id.
        let (_, again) = fleet.register(server, conn);
        assert_eq!(again[0].command_id, id);

        assert!(!fleet.complete(Uuid::new_v4(), id, Outcome::error("x", "y", false)));
        assert!(fleet.complete(server, id, Outcome::ok(&ping()).unwrap()));
        assert!(waiting.await.unwrap().is_ok());
        assert!(fleet.lock().pending.is_empty());
    }
}
