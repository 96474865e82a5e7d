//! The bounded table of live flows: a slab of slots addressed by tokens, plus a map from
//! the guest-side 4-tuple to the slot.
//!
//! Owns flow lifetime and token generation: a token names one flow for its whole life and
//! never a later flow in the same slot (the slot's generation is part of the token), so a
//! stale readiness event for a closed flow is ignored. Never does I/O.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::tcp::TcpConn;
use crate::udp::UdpFlow;

/// Tokens with this bit set name published-port listeners, not flows.
pub(crate) const LISTENER_TAG: u64 = 1 << 63;
/// Tokens with this bit set name the shared raw ICMP sockets.
pub(crate) const ICMP_TAG: u64 = 1 << 62;

/// Transport of a flow key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KeyProto {
    Tcp,
    Udp,
}

/// A flow as the guest sees it: its own endpoint and the remote endpoint it talks to
/// (the original destination, or the gateway for published ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub proto: KeyProto,
    pub guest: SocketAddr,
    pub remote: SocketAddr,
}

/// A live flow.
pub(crate) enum Flow {
    Tcp(Box<TcpConn>),
    Udp(UdpFlow),
}

impl Flow {
    pub(crate) fn key(&self) -> &FlowKey {
        match self {
            Flow::Tcp(c) => &c.key,
            Flow::Udp(u) => &u.key,
        }
    }
}

struct Slot {
    generation: u32,
    flow: Option<Flow>,
}

/// Bounded flow table.
pub(crate) struct FlowTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    map: HashMap<FlowKey, u64>,
    max: usize,
    tcp: usize,
}

impl FlowTable {
    /// An empty table holding at most `max` flows.
    pub(crate) fn new(max: usize) -> Self {
        FlowTable {
            slots: Vec::new(),
            free: Vec::new(),
            map: HashMap::new(),
            max,
            tcp: 0,
        }
    }

    /// Number of live flows.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Number of live TCP flows.
    pub(crate) fn tcp_len(&self) -> usize {
        self.tcp
    }

    /// Whether another flow fits.
    pub(crate) fn has_room(&self) -> bool {
        self.map.len() < self.max
    }

    /// Token of the flow with `key`.
    pub(crate) fn lookup(&self, key: &FlowKey) -> Option<u64> {
        self.map.get(key).copied()
    }

    /// Inserts a flow and returns its token; `None` (and the flow, with its socket, is
    /// dropped) if the table is full or the key is taken.
    pub(crate) fn insert(&mut self, flow: Flow) -> Option<u64> {
        if !self.has_room() || self.map.contains_key(flow.key()) {
            return None;
        }
        if matches!(flow, Flow::Tcp(_)) {
            self.tcp += 1;
        }
        let key = *flow.key();
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].flow = Some(flow);
                i
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    flow: Some(flow),
                });
                (self.slots.len() - 1) as u32
            }
        };
        let t = token(idx, self.slots[idx as usize].generation);
        self.map.insert(key, t);
        Some(t)
    }

    /// The flow named by `token`, if still alive.
    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut Flow> {
        let (idx, generation) = split(token)?;
        let slot = self.slots.get_mut(idx as usize)?;
        if slot.generation != generation {
            return None;
        }
        slot.flow.as_mut()
    }

    /// Removes and returns the flow named by `token`.
    pub(crate) fn remove(&mut self, token: u64) -> Option<Flow> {
        let (idx, generation) = split(token)?;
        let slot = self.slots.get_mut(idx as usize)?;
        if slot.generation != generation {
            return None;
        }
        let flow = slot.flow.take()?;
        slot.generation = (slot.generation + 1) & GEN_MASK;
        self.free.push(idx);
        self.map.remove(flow.key());
        if matches!(flow, Flow::Tcp(_)) {
            self.tcp -= 1;
        }
        Some(flow)
    }

    /// Tokens of all live flows (for timers).
    pub(crate) fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.flow.is_some())
            .map(|(i, s)| token(i as u32, s.generation))
    }

    /// All live flows.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Flow> + '_ {
        self.slots.iter().filter_map(|s| s.flow.as_ref())
    }
}

const GEN_MASK: u32 = (1 << 30) - 1;

fn token(idx: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(idx)
}

fn split(token: u64) -> Option<(u32, u32)> {
    if token & (LISTENER_TAG | ICMP_TAG) != 0 {
        return None;
    }
    Some((token as u32, (token >> 32) as u32))
}
