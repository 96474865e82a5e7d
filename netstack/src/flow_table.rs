//! The bounded table of live flows: a slab of slots addressed by tokens, plus a map from
//! the guest-side 4-tuple to the slot.
//!
//! Owns flow lifetime and token generation: a token names one flow for its whole life and
//! never a later flow in the same slot (the slot's generation is part of the token), so a
//! stale readiness event for a closed flow is ignored. Never does I/O.
//!
//! Also keeps the flows' timer deadlines in a heap, so the earliest one costs O(flows
//! changed) per event-loop pass instead of a scan of every flow: every mutable access to a
//! flow goes through [`FlowTable::get_mut`] or [`FlowTable::insert`], which mark it, and
//! [`FlowTable::next_deadline`] recomputes only the marked flows' deadlines. Entries left
//! behind by a flow whose deadline moved are skipped when they surface and purged when the
//! heap outgrows twice the table.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use crate::flow_key::{FlowKey, ICMP_TAG, LISTENER_TAG};
use crate::tcp::TcpConn;
use crate::udp::UdpFlow;

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
    /// In `touched`: its deadline may have changed since the heap last saw it.
    touched: bool,
}

/// Bounded flow table.
pub(crate) struct FlowTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    map: HashMap<FlowKey, u64>,
    max: usize,
    /// Most flows other than TCP (UDP, embedder datagram services): `max` minus the slots
    /// reserved for TCP, so a UDP flood cannot take the room new TCP connections need.
    max_other: usize,
    tcp: usize,
    /// Live TCP flows accepted on published ports.
    tcp_ingress: usize,
    /// Slots accessed mutably since the last [`FlowTable::next_deadline`].
    touched: Vec<u32>,
    /// (deadline, token) of every flow, plus stale entries (see the module doc).
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl FlowTable {
    /// An empty table holding at most `max` flows, of which `tcp_reserve` are only for
    /// TCP.
    pub(crate) fn new(max: usize, tcp_reserve: usize) -> Self {
        FlowTable {
            slots: Vec::new(),
            free: Vec::new(),
            map: HashMap::new(),
            max,
            max_other: max.saturating_sub(tcp_reserve),
            tcp: 0,
            tcp_ingress: 0,
            touched: Vec::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    fn touch(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if !slot.touched {
            slot.touched = true;
            self.touched.push(idx);
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

    /// Number of live TCP flows accepted on published ports.
    pub(crate) fn tcp_ingress_len(&self) -> usize {
        self.tcp_ingress
    }

    /// Whether another flow fits.
    pub(crate) fn has_room(&self) -> bool {
        self.map.len() < self.max
    }

    /// Number of live flows other than TCP.
    pub(crate) fn other_len(&self) -> usize {
        self.map.len() - self.tcp
    }

    /// Whether another flow other than TCP fits (outside the TCP reserve).
    pub(crate) fn has_room_for_other(&self) -> bool {
        self.has_room() && self.other_len() < self.max_other
    }

    /// Token of the flow with `key`.
    pub(crate) fn lookup(&self, key: &FlowKey) -> Option<u64> {
        self.map.get(key).copied()
    }

    /// Inserts a flow and returns its token; `None` (and the flow, with its socket, is
    /// dropped) if the table is full or the key is taken.
    pub(crate) fn insert(&mut self, flow: Flow) -> Option<u64> {
        let room = match &flow {
            Flow::Tcp(_) => self.has_room(),
            _ => self.has_room_for_other(),
        };
        if !room || self.map.contains_key(flow.key()) {
            return None;
        }
        if let Flow::Tcp(c) = &flow {
            self.tcp += 1;
            self.tcp_ingress += usize::from(c.ingress_peer.is_some());
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
                    touched: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.touch(idx);
        let t = token(idx, self.slots[idx as usize].generation);
        self.map.insert(key, t);
        Some(t)
    }

    /// The flow named by `token`, if still alive (marked: its deadline may change).
    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut Flow> {
        let (idx, generation) = split(token)?;
        let slot = self.slots.get(idx as usize)?;
        if slot.generation != generation || slot.flow.is_none() {
            return None;
        }
        self.touch(idx);
        self.slots[idx as usize].flow.as_mut()
    }

    /// The flow named by `token`, if still alive.
    pub(crate) fn get(&self, token: u64) -> Option<&Flow> {
        let (idx, generation) = split(token)?;
        let slot = self.slots.get(idx as usize)?;
        if slot.generation != generation {
            return None;
        }
        slot.flow.as_ref()
    }

    /// The earliest `deadline_of(flow)` over all flows. `deadline_of` must depend only on
    /// the flow (and constants): a flow's deadline is recomputed only after a mutable access.
    pub(crate) fn next_deadline(
        &mut self,
        deadline_of: impl Fn(&Flow) -> Instant,
    ) -> Option<Instant> {
        let mut touched = std::mem::take(&mut self.touched);
        for &idx in &touched {
            let slot = &mut self.slots[idx as usize];
            slot.touched = false;
            if let Some(flow) = &slot.flow {
                let t = token(idx, slot.generation);
                self.deadlines.push(Reverse((deadline_of(flow), t)));
            }
        }
        touched.clear();
        self.touched = touched;
        if self.deadlines.len() > 2 * self.map.len() + 64 {
            let live = self.slots.iter().enumerate().filter_map(|(i, s)| {
                s.flow
                    .as_ref()
                    .map(|f| Reverse((deadline_of(f), token(i as u32, s.generation))))
            });
            self.deadlines = live.collect();
        }
        while let Some(&Reverse((at, t))) = self.deadlines.peek() {
            match self.get(t) {
                Some(flow) if deadline_of(flow) == at => return Some(at),
                _ => {
                    self.deadlines.pop();
                }
            }
        }
        None
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
        if let Flow::Tcp(c) = &flow {
            self.tcp -= 1;
            self.tcp_ingress -= usize::from(c.ingress_peer.is_some());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow_key::KeyProto;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn udp_flow(port: u16, at: Instant) -> Flow {
        let key = FlowKey {
            proto: KeyProto::Udp,
            guest: SocketAddr::from(([10, 0, 0, 2], port)),
            remote: SocketAddr::from(([10, 0, 0, 1], 53)),
        };
        let fd = std::fs::File::open("/dev/null")
            .expect("open /dev/null")
            .into();
        Flow::Udp(UdpFlow {
            key,
            fd,
            last_activity: at,
            host_readable: false,
            registered: false,
            queued: false,
            dns: false,
            peer: None,
            embedder: false,
        })
    }

    fn at(f: &Flow) -> Instant {
        match f {
            Flow::Udp(u) => u.last_activity,
            Flow::Tcp(_) => unreachable!("only UDP flows here"),
        }
    }

    /// The heap agrees with a scan of every flow after any mix of inserts, removals and
    /// deadline moves (earlier and later), including across compactions.
    #[test]
    fn next_deadline_matches_a_full_scan() {
        let base = Instant::now();
        let mut table = FlowTable::new(64, 0);
        let mut live: Vec<u64> = Vec::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut port = 1000u16;
        for step in 0..5000 {
            let secs = Duration::from_millis(next() % 100_000);
            match next() % 4 {
                0 if live.len() < 64 => {
                    port += 1;
                    if let Some(t) = table.insert(udp_flow(port, base + secs)) {
                        live.push(t);
                    }
                }
                1 if !live.is_empty() => {
                    let t = live.swap_remove((next() % live.len() as u64) as usize);
                    assert!(table.remove(t).is_some());
                }
                _ if !live.is_empty() => {
                    let t = live[(next() % live.len() as u64) as usize];
                    if let Some(Flow::Udp(u)) = table.get_mut(t) {
                        u.last_activity = base + secs;
                    }
                }
                _ => {}
            }
            if step % 3 == 0 {
                let scan = live.iter().filter_map(|&t| table.get(t)).map(at).min();
                assert_eq!(table.next_deadline(at), scan, "step {step}");
                assert!(table.deadlines.len() <= 2 * table.len() + 64 + live.len());
            }
        }
    }
}
