//! The hub's door for connections that have not proved who they are yet. A TLS handshake,
//! the WebSocket upgrade and the Hello hold a pass. The accept loop takes one of the
//! `AGENT_HANDSHAKES_MAX` slots *before* it accepts, so connections beyond that wait in the
//! kernel's accept queue, costing no descriptor, TLS state or task; one from a source that
//! already has `AGENT_HANDSHAKES_PER_IP` in flight is closed at once. So a flood of half-open
//! connections holds at most `AGENT_HANDSHAKES_MAX` descriptors (and `AGENT_HANDSHAKES_PER_IP`
//! per source), and the API, the database pool and the connected agents keep theirs.
//!
//! Waiting rather than closing matters in a reconnect storm: a closed agent comes back only
//! after its back-off, which doubles at each refusal, so 10,000 agents refused at a 512-slot
//! door spread their return over half a minute while the hub sat mostly idle; queued, each
//! gets the next free slot. The queue is bounded by the listen backlog (the kernel drops
//! SYNs beyond it and the client retransmits), and an agent gives up after its own connect
//! timeout.

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

/// One of the handshakes in flight, taken before the connection is accepted.
pub struct Slot(OwnedSemaphorePermit);

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

    /// Waits for a free handshake slot (call before accepting the connection).
    pub async fn slot(&self) -> Slot {
        Slot(
            self.in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the gate's semaphore is never closed"),
        )
    }

    /// A slot if one is free now.
    pub fn try_slot(&self) -> Option<Slot> {
        self.in_flight.clone().try_acquire_owned().ok().map(Slot)
    }

    /// A pass for a new connection from `source` holding `slot`, or `None`: close it (the
    /// slot is freed).
    pub fn enter(self: &Arc<Self>, source: IpAddr, slot: Slot) -> Option<Pass> {
        let mut per_source = self.per_source.lock().expect("gate lock");
        let count = per_source.entry(source).or_insert(0);
        if *count >= self.per_source_max {
            return None;
        }
        let slot = slot.0;
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
        let enter = |ip| gate.enter(ip, gate.try_slot()?);
        let a1 = enter(a).unwrap();
        let _a2 = enter(a).unwrap();
        assert!(enter(a).is_none(), "a third from one source");
        assert!(gate.try_slot().is_some(), "its slot went back");
        let b1 = enter(b).unwrap();
        assert!(gate.try_slot().is_none(), "the fourth in all");
        drop(a1);
        let _a3 = enter(a).unwrap();
        drop(b1);
        let _b2 = enter(b).unwrap();
        drop(_a2);
        drop(_a3);
        assert!(
            gate.per_source.lock().unwrap().get(&a).is_none(),
            "emptied sources go"
        );
    }
}
