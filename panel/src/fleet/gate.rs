//! The hub's door for connections that have not proved who they are yet. A TLS handshake,
//! the WebSocket upgrade and the Hello hold a pass; a connection that gets none — too many
//! handshakes in flight in all, or from its source address — is closed at once, before it
//! costs a TLS state or a task. So a flood of half-open connections holds at most
//! `AGENT_HANDSHAKES_MAX` descriptors (and `AGENT_HANDSHAKES_PER_IP` per source), and the
//! API, the database pool and the connected agents keep theirs.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct HandshakeGate {
    in_flight: Arc<Semaphore>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    per_source_max: usize,
}

/// Held while one connection is unauthenticated; dropping it frees the slot.
pub struct Pass {
    _slot: OwnedSemaphorePermit,
    gate: Arc<HandshakeGate>,
    source: IpAddr,
}

impl HandshakeGate {
    pub fn new(max: usize, per_source_max: usize) -> Arc<HandshakeGate> {
        Arc::new(HandshakeGate {
            in_flight: Arc::new(Semaphore::new(max)),
            per_source: Mutex::new(HashMap::new()),
            per_source_max,
        })
    }

    /// A pass for a new connection from `source`, or `None`: close it.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Option<Pass> {
        let mut per_source = self.per_source.lock().expect("gate lock");
        let count = per_source.entry(source).or_insert(0);
        if *count >= self.per_source_max {
            return None;
        }
        let slot = self.in_flight.clone().try_acquire_owned().ok()?;
        *count += 1;
        Some(Pass {
            _slot: slot,
            gate: self.clone(),
            source,
        })
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut per_source = self.gate.per_source.lock().expect("gate lock");
        if let Some(count) = per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_handshakes_in_all_and_per_source() {
        let gate = HandshakeGate::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = gate.enter(a).unwrap();
        let _a2 = gate.enter(a).unwrap();
        assert!(gate.enter(a).is_none(), "a third from one source");
        let b1 = gate.enter(b).unwrap();
        assert!(gate.enter(b).is_none(), "the fourth in all");
        drop(a1);
        let _a3 = gate.enter(a).unwrap();
        drop(b1);
        let _b2 = gate.enter(b).unwrap();
        drop(_a2);
        drop(_a3);
        assert!(
            gate.per_source.lock().unwrap().get(&a).is_none(),
            "emptied sources go"
        );
    }
}
