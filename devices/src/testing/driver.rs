//! The harness's virtio driver: feature negotiation, queue setup, descriptor chains, kicks,
//! interrupts and used-ring reads, all through the real transport. It sets up every queue the
//! device declares; queues 0 and 1 are named `rx` and `tx` (virtio-net's and virtio-vsock's
//! order), later ones are in `extra`; virtio-blk's one request queue is queue 0. The
//! virtio-net helpers (`send`, `post_rx`, `recv_frames`) assume the net layout.

use std::collections::{HashMap, VecDeque};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{rings_at, slot, MAX_QUEUE, MEM_SIZE, RING_BASE, SLOT_SIZE};
use crate::net::header::{VirtioNetHdr, VNET_HDR_LEN};
use crate::net::{RX_QUEUE, TX_QUEUE};
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::mmio::{regs, MmioTransport};
use crate::virtio::{
    VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// What went wrong in the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Setting up memory, device or transport failed.
    #[error("harness setup failed: {0}")]
    Setup(String),
    /// The device did not do what we waited for in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// The device refused a step of initialisation.
    #[error("device refused {0}")]
    Refused(&'static str),
    /// The queue has no free descriptors.
    #[error("queue {0} has no free descriptors")]
    Full(u16),
}

/// A raw descriptor table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor index.
    pub next: u16,
}

/// One used-ring element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the chain.
    pub id: u32,
    /// Bytes the device wrote.
    pub len: u32,
}

/// Driver-side state of one virtqueue.
#[derive(Debug)]
pub struct DriverQueue {
    /// Queue index.
    pub index: u16,
    /// Queue size.
    pub size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    avail_idx: Wrapping<u16>,
    /// Avail index at the previous kick decision (the "old" of `vring_need_event`).
    checked_idx: Wrapping<u16>,
    last_used: Wrapping<u16>,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    /// Kicks sent on this queue.
    pub kicks: u64,
    /// Kicks skipped because the device suppressed notifications.
    pub kicks_suppressed: u64,
}

impl DriverQueue {
    fn new(index: u16, size: u16, ring_base: u64) -> Self {
        let (desc, avail, used) = rings_at(ring_base, index);
        Self {
            index,
            size,
            desc,
            avail,
            used,
            avail_idx: Wrapping(0),
            checked_idx: Wrapping(0),
            last_used: Wrapping(0),
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            kicks: 0,
            kicks_suppressed: 0,
        }
    }

    /// Descriptors not in flight.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Guest addresses of this queue's descriptor table, avail ring and used ring.
    pub fn ring_addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.desc, self.avail, self.used)
    }
}

/// An in-process virtio driver over the real [`MmioTransport`].
#[derive(Debug)]
pub struct VirtioDriver {
    mem: GuestMemoryMmap,
    transport: MmioTransport,
    features: u64,
    /// Queue 0's state (virtio-net: RX; virtio-blk: the request queue).
    pub rx: DriverQueue,
    /// Queue 1's state (virtio-net: TX; size 0 on a device with one queue).
    pub tx: DriverQueue,
    /// The state of the queues after the first two (virtio-vsock's event queue), in order.
    pub extra: Vec<DriverQueue>,
    rx_pending: VecDeque<UsedElem>,
    /// Interrupts observed on the irq eventfd.
    pub interrupts: u64,
    /// How long waits spin on the used ring before sleeping on the irq eventfd (like a
    /// polling guest). Zero by default: on a loaded host a spinning driver starves the
    /// device worker.
    pub spin: Duration,
    /// Where [`initialize`](Self::initialize) places the rings (queue 0's descriptor table;
    /// see [`super::rings_at`]). Change it before a re-initialisation to move the rings.
    pub ring_base: u64,
}

/// The driver under the name virtio-net tests know it by.
pub type NetDriver = VirtioDriver;

impl VirtioDriver {
    /// Creates guest memory and the transport for `device`, negotiates
    /// `driver_features & offered` and sets the device to DRIVER_OK.
    pub fn new(device: Box<dyn VirtioDevice>, driver_features: u64) -> Result<Self, HarnessError> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .map_err(|e| HarnessError::Setup(format!("guest memory: {e}")))?;
        let transport = MmioTransport::new(mem.clone(), device)
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let mut d = Self {
            mem,
            transport,
            features: 0,
            rx: DriverQueue::new(RX_QUEUE as u16, 0, RING_BASE),
            tx: DriverQueue::new(TX_QUEUE as u16, 0, RING_BASE),
            extra: Vec::new(),
            rx_pending: VecDeque::new(),
            interrupts: 0,
            spin: Duration::ZERO,
            ring_base: RING_BASE,
        };
        d.initialize(driver_features)?;
        Ok(d)
    }

    /// Runs the virtio 1.2 §3.1.1 initialisation sequence.
    pub fn initialize(&mut self, driver_features: u64) -> Result<(), HarnessError> {
        if self.read_reg(regs::MAGIC_VALUE) != 0x7472_6976 || self.read_reg(regs::VERSION) != 2 {
            return Err(HarnessError::Refused("magic/version"));
        }
        self.write_reg(regs::STATUS, 0);
        self.write_reg(regs::STATUS, STATUS_ACKNOWLEDGE);
        self.write_reg(regs::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write_reg(regs::DEVICE_FEATURES_SEL, 0);
        let lo = u64::from(self.read_reg(regs::DEVICE_FEATURES));
        self.write_reg(regs::DEVICE_FEATURES_SEL, 1);
        let hi = u64::from(self.read_reg(regs::DEVICE_FEATURES));
        let features = ((hi << 32) | lo) & driver_features;
        self.write_reg(regs::DRIVER_FEATURES_SEL, 0);
        self.write_reg(regs::DRIVER_FEATURES, features as u32);
        self.write_reg(regs::DRIVER_FEATURES_SEL, 1);
        self.write_reg(regs::DRIVER_FEATURES, (features >> 32) as u32);
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write_reg(regs::STATUS, st);
        if self.read_reg(regs::STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(HarnessError::Refused("FEATURES_OK"));
        }
        self.features = features;
        // Every queue the device declares (two for virtio-net, three for virtio-vsock).
        let queues = self.transport.device().queue_max_sizes().len() as u16;
        self.extra.clear();
        for q in 0..queues {
            self.write_reg(regs::QUEUE_SEL, u32::from(q));
            let max = self.read_reg(regs::QUEUE_NUM_MAX) as u16;
            let size = max.min(MAX_QUEUE);
            let dq = DriverQueue::new(q, size, self.ring_base);
            if size == 0 {
                // The device has no such queue (virtio-blk has one).
                if q == TX_QUEUE as u16 {
                    self.tx = dq;
                }
                continue;
            }
            // Fresh rings: zero flags/idx.
            let zeros = vec![0u8; 0x1000 * 12];
            self.mem
                .write_slice(&zeros, dq.desc)
                .map_err(|e| HarnessError::Setup(e.to_string()))?;
            self.write_reg(regs::QUEUE_NUM, u32::from(size));
            for (lo, hi, addr) in [
                (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, dq.desc),
                (regs::QUEUE_AVAIL_LOW, regs::QUEUE_AVAIL_HIGH, dq.avail),
                (regs::QUEUE_USED_LOW, regs::QUEUE_USED_HIGH, dq.used),
            ] {
                self.write_reg(lo, addr.0 as u32);
                self.write_reg(hi, (addr.0 >> 32) as u32);
            }
            self.write_reg(regs::QUEUE_READY, 1);
            match usize::from(q) {
                RX_QUEUE => self.rx = dq,
                TX_QUEUE => self.tx = dq,
                _ => self.extra.push(dq),
            }
        }
        self.rx_pending.clear();
        self.write_reg(regs::STATUS, st | STATUS_DRIVER_OK);
        if self.read_reg(regs::STATUS) & STATUS_DRIVER_OK == 0 {
            return Err(HarnessError::Refused("DRIVER_OK"));
        }
        Ok(())
    }

    /// Reads a 32-bit register through the transport.
    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes a 32-bit register through the transport.
    pub fn write_reg(&mut self, offset: u64, v: u32) {
        self.transport.write(offset, &v.to_le_bytes());
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The transport under test.
    pub fn transport(&mut self) -> &mut MmioTransport {
        &mut self.transport
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The driver state of queue `q` (panics on a queue the device does not have: a bug in
    /// the test).
    fn queue(&mut self, q: usize) -> &mut DriverQueue {
        match q {
            RX_QUEUE => &mut self.rx,
            TX_QUEUE => &mut self.tx,
            _ => &mut self.extra[q - 2],
        }
    }

    fn event_idx(&self) -> bool {
        self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }

    /// Writes descriptor `index` of queue `q`.
    pub fn write_desc(&mut self, q: usize, index: u16, d: RawDesc) {
        let base = self.queue(q).desc;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        let _ = self
            .mem
            .write_slice(&b, base.unchecked_add(u64::from(index) * 16));
    }

    /// Puts `head` on the avail ring (not yet kicked).
    pub fn publish(&mut self, q: usize, head: u16) {
        let mem = self.mem.clone();
        let dq = self.queue(q);
        let slot_addr = dq
            .avail
            .unchecked_add(4 + 2 * u64::from(dq.avail_idx.0 % dq.size));
        let _ = mem.write_obj(head.to_le(), slot_addr);
        dq.avail_idx += Wrapping(1);
        let _ = mem.store(
            dq.avail_idx.0.to_le(),
            dq.avail.unchecked_add(2),
            Ordering::Release,
        );
    }

    /// Overwrites the avail index of queue `q` (hostile drivers).
    pub fn set_avail_idx(&mut self, q: usize, v: u16) {
        let mem = self.mem.clone();
        let dq = self.queue(q);
        dq.avail_idx = Wrapping(v);
        let _ = mem.store(v.to_le(), dq.avail.unchecked_add(2), Ordering::Release);
    }

    /// Places a chain of driver buffers (one slot per part, `write` = device-writable) on
    /// queue `q`. Returns the head index.
    pub fn add_chain(
        &mut self,
        q: usize,
        parts: &[&[u8]],
        write_lens: &[u32],
    ) -> Result<u16, HarnessError> {
        self.add_chain_filled(q, parts, write_lens, None)
    }

    /// As [`add_chain`](Self::add_chain); with `fill`, every device-writable buffer is filled
    /// with that byte *before* the chain is published, so nothing stale (and no fill written
    /// after the device already answered) passes for what the device wrote.
    pub fn add_chain_filled(
        &mut self,
        q: usize,
        parts: &[&[u8]],
        write_lens: &[u32],
        fill: Option<u8>,
    ) -> Result<u16, HarnessError> {
        let n = parts.len() + write_lens.len();
        let qi = self.queue(q).index;
        if n == 0 || self.queue(q).free.len() < n {
            return Err(HarnessError::Full(qi));
        }
        let idxs: Vec<u16> = (0..n).filter_map(|_| self.queue(q).free.pop()).collect();
        for (i, &d) in idxs.iter().enumerate() {
            let addr = slot(qi, d);
            let (len, flags) = if i < parts.len() {
                let _ = self.mem.write_slice(parts[i], addr);
                (parts[i].len() as u32, 0)
            } else {
                let len = write_lens[i - parts.len()];
                if let Some(byte) = fill {
                    let _ = self.mem.write_slice(&vec![byte; len as usize], addr);
                }
                (len, VRING_DESC_F_WRITE)
            };
            let last = i + 1 == n;
            let next = if last { 0 } else { idxs[i + 1] };
            let flags = flags | if last { 0 } else { VRING_DESC_F_NEXT };
            self.write_desc(
                q,
                d,
                RawDesc {
                    addr: addr.0,
                    len,
                    flags,
                    next,
                },
            );
        }
        let head = idxs[0];
        self.queue(q).chains.insert(head, idxs);
        self.publish(q, head);
        Ok(head)
    }

    /// Places a raw (possibly hostile) chain: `descs[i]` goes to table index `indices[i]`;
    /// the head is `indices[0]` (or `head` if given). The indices are taken out of the free
    /// list while the chain is in flight.
    pub fn add_raw_chain(
        &mut self,
        q: usize,
        indices: &[u16],
        descs: &[RawDesc],
        head: Option<u16>,
    ) -> u16 {
        for (&i, &d) in indices.iter().zip(descs) {
            self.write_desc(q, i, d);
        }
        let head = head.unwrap_or(indices[0]);
        let dq = self.queue(q);
        dq.free.retain(|f| !indices.contains(f));
        dq.chains.insert(head, indices.to_vec());
        self.publish(q, head);
        head
    }

    /// The descriptor indices of chain `head` of queue `q` while it is in flight (in chain
    /// order; each descriptor's buffer is [`slot_addr`](Self::slot_addr) for chains from
    /// [`add_chain`](Self::add_chain)).
    pub fn chain_descriptors(&self, q: usize, head: u16) -> Option<Vec<u16>> {
        let dq = if q == RX_QUEUE { &self.rx } else { &self.tx };
        dq.chains.get(&head).cloned()
    }

    /// The guest address of descriptor slot `d` of queue `q` (for raw chains).
    pub fn slot_addr(&self, q: usize, d: u16) -> u64 {
        slot(q as u16, d).0
    }

    /// Sends one frame on TX as a single descriptor (header + frame), kicks if the device
    /// wants a kick; returns the head.
    pub fn send(&mut self, hdr: &VirtioNetHdr, frame: &[u8]) -> Result<u16, HarnessError> {
        let mut buf = Vec::with_capacity(VNET_HDR_LEN + frame.len());
        buf.extend_from_slice(&hdr.to_bytes());
        buf.extend_from_slice(frame);
        let head = self.add_chain(TX_QUEUE, &[&buf], &[])?;
        self.kick(TX_QUEUE);
        Ok(head)
    }

    /// Posts `n` RX chains of one `len`-byte writable buffer each and kicks if needed.
    pub fn post_rx(&mut self, n: usize, len: u32) -> Result<(), HarnessError> {
        for _ in 0..n {
            self.add_chain(RX_QUEUE, &[], &[len.min(SLOT_SIZE as u32)])?;
        }
        self.kick(RX_QUEUE);
        Ok(())
    }

    /// Whether the device asked to be notified about the avail entries added since the last
    /// kick (EVENT_IDX `avail_event`, or the used ring's NO_NOTIFY flag).
    pub fn needs_kick(&mut self, q: usize, old: u16) -> bool {
        fence(Ordering::SeqCst);
        if self.event_idx() {
            let ev = self.avail_event(q);
            let new = self.queue(q).avail_idx;
            (new - Wrapping(ev) - Wrapping(1)) < (new - Wrapping(old))
        } else {
            let mem = self.mem.clone();
            let flags: u16 = mem
                .load(self.queue(q).used, Ordering::Acquire)
                .map(u16::from_le)
                .unwrap_or(0);
            flags & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// The device's `avail_event` of queue `q` (EVENT_IDX): the driver kicks once its avail
    /// index moves past it.
    pub fn avail_event(&mut self, q: usize) -> u16 {
        let mem = self.mem.clone();
        let dq = self.queue(q);
        mem.load(
            dq.used.unchecked_add(4 + 8 * u64::from(dq.size)),
            Ordering::Acquire,
        )
        .map(u16::from_le)
        .unwrap_or(0)
    }

    /// The driver's avail index of queue `q`.
    pub fn avail_idx(&mut self, q: usize) -> u16 {
        self.queue(q).avail_idx.0
    }

    /// Kicks queue `q` through its eventfd (what KVM's ioeventfd does) if the device wants
    /// it; returns whether it kicked.
    pub fn kick(&mut self, q: usize) -> bool {
        let old = {
            let dq = self.queue(q);
            let old = dq.checked_idx.0;
            dq.checked_idx = dq.avail_idx;
            old
        };
        if self.needs_kick(q, old) {
            self.kick_always(q);
            true
        } else {
            self.queue(q).kicks_suppressed += 1;
            false
        }
    }

    /// Kicks queue `q` unconditionally.
    pub fn kick_always(&mut self, q: usize) {
        self.queue(q).kicks += 1;
        let _ = self.transport.queue_notify_evts()[q].write(1);
    }

    /// Kicks queue `q` by writing QueueNotify through the transport (the slow MMIO-exit path).
    pub fn kick_mmio(&mut self, q: usize) {
        self.queue(q).kicks += 1;
        self.write_reg(regs::QUEUE_NOTIFY, q as u32);
    }

    /// The device's used index of queue `q`.
    pub fn used_idx(&mut self, q: usize) -> u16 {
        let mem = self.mem.clone();
        let dq = self.queue(q);
        mem.load(dq.used.unchecked_add(2), Ordering::Acquire)
            .map(u16::from_le)
            .unwrap_or(0)
    }

    /// Sets `used_event` of queue `q` (EVENT_IDX): interrupt once the used index passes it.
    pub fn set_used_event(&mut self, q: usize, v: u16) {
        let mem = self.mem.clone();
        let dq = self.queue(q);
        let _ = mem.store(
            v.to_le(),
            dq.avail.unchecked_add(4 + 2 * u64::from(dq.size)),
            Ordering::Release,
        );
    }

    /// Takes all new used elements of queue `q` and frees their descriptors.
    pub fn take_used(&mut self, q: usize) -> Vec<UsedElem> {
        let idx = Wrapping(self.used_idx(q));
        let mem = self.mem.clone();
        let dq = self.queue(q);
        let mut out = Vec::new();
        while dq.last_used != idx {
            let a = dq
                .used
                .unchecked_add(4 + 8 * u64::from(dq.last_used.0 % dq.size));
            let mut b = [0u8; 8];
            let _ = mem.read_slice(&mut b, a);
            let e = UsedElem {
                id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            };
            if let Some(descs) = dq.chains.remove(&(e.id as u16)) {
                dq.free.extend(descs);
            }
            out.push(e);
            dq.last_used += Wrapping(1);
        }
        out
    }

    /// Spins (like a polling guest, e.g. the probe) for up to `spin` until the used index of
    /// queue `q` moves past what the driver has seen; true if it did.
    pub fn spin_for_used(&mut self, q: usize, spin: Duration) -> bool {
        if spin.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            let seen = self.queue(q).last_used.0;
            if self.used_idx(q) != seen {
                return true;
            }
            if start.elapsed() >= spin {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Waits (bounded) for the irq eventfd; acks InterruptStatus when it fires.
    pub fn wait_irq(&mut self, timeout: Duration) -> bool {
        let fd = self.transport.irq_evt().as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds = 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 && self.transport.irq_evt().read().is_ok() {
            self.interrupts += 1;
            let st = self.read_reg(regs::INTERRUPT_STATUS);
            self.write_reg(regs::INTERRUPT_ACK, st & INT_USED_RING);
            return true;
        }
        false
    }

    /// Waits until at least `n` used elements arrived on queue `q` (reset with each call).
    pub fn wait_used(
        &mut self,
        q: usize,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<UsedElem>, HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            if self.event_idx() {
                let last = self.queue(q).last_used.0;
                self.set_used_event(q, last);
            }
            got.extend(self.take_used(q));
            if got.len() >= n {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{n} used elements on queue {q} (got {})", got.len()),
                    timeout,
                });
            }
            if !self.spin_for_used(q, self.spin) {
                self.wait_irq((deadline - now).min(Duration::from_millis(2)));
            }
        }
    }

    /// Reads the bytes of a used single-slot RX chain.
    pub fn read_slot(&self, q: usize, head: u16, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let _ = self.mem.read_slice(&mut v, slot(q as u16, head));
        v
    }

    /// Waits for `n` frames on RX (posted with [`post_rx`](Self::post_rx)); merges
    /// MRG_RXBUF spans using `num_buffers`. Returns (header, frame) pairs.
    pub fn recv_frames(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<(VirtioNetHdr, Vec<u8>)>, HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            while let Some(&first) = self.rx_pending.front() {
                if first.len == 0 {
                    self.rx_pending.pop_front();
                    continue;
                }
                let data = self.read_slot(RX_QUEUE, first.id as u16, first.len as usize);
                if data.len() < VNET_HDR_LEN {
                    self.rx_pending.pop_front();
                    continue;
                }
                let mut hb = [0u8; VNET_HDR_LEN];
                hb.copy_from_slice(&data[..VNET_HDR_LEN]);
                let hdr = VirtioNetHdr::from_bytes(&hb);
                let k = usize::from(hdr.num_buffers.max(1));
                if self.rx_pending.len() < k {
                    break;
                }
                let mut frame = data[VNET_HDR_LEN..].to_vec();
                self.rx_pending.pop_front();
                for _ in 1..k {
                    if let Some(e) = self.rx_pending.pop_front() {
                        frame.extend(self.read_slot(RX_QUEUE, e.id as u16, e.len as usize));
                    }
                }
                frames.push((hdr, frame));
            }
            if frames.len() >= n {
                return Ok(frames);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{n} RX frames (got {})", frames.len()),
                    timeout,
                });
            }
            if self.event_idx() {
                let last = self.rx.last_used.0;
                self.set_used_event(RX_QUEUE, last);
            }
            let mut new = self.take_used(RX_QUEUE);
            if new.is_empty() && self.spin_for_used(RX_QUEUE, self.spin) {
                new = self.take_used(RX_QUEUE);
            }
            if new.is_empty() {
                self.wait_irq((deadline - now).min(Duration::from_millis(2)));
            }
            self.rx_pending.extend(new);
        }
    }

    /// Resets the device (status 0) and re-initialises it with `driver_features`.
    pub fn reset_and_reinit(&mut self, driver_features: u64) -> Result<(), HarnessError> {
        self.write_reg(regs::STATUS, 0);
        self.initialize(driver_features)
    }
}
