//! The `user` backend: the device's frames go to and from the userspace [`Netstack`]
//! (design §6), which turns them into host socket operations.
//!
//! TX frames are handed to the netstack as slices of guest memory (no copy here; the netstack
//! copies only headers it parses). RX frames are written by the netstack straight into the
//! guest's RX buffers; the device writes the virtio-net header from the frame's [`RxMeta`].
//! The netstack's host sockets are polled by the device's io_uring loop: this adapter keeps the
//! netstack's persistent interest set (applied from its change list) and reports all of it on
//! every iteration, which the loop turns into one-shot polls re-armed while wanted — the
//! level-triggered semantics the netstack asks for.
//!
//! A policy that can change while the VM runs comes with an eventfd
//! ([`UserBackend::rejudge_on`]): it sits in the same poll set under a reserved token, so a
//! change wakes the device's loop even when the guest is idle, and every open flow is judged
//! again at once (TCP flows the new policy denies are reset, UDP flows closed).
//!
//! The embedding API reaches the netstack the same way ([`UserBackend::controlled_by`]):
//! closures ([`StackTask`]) queued by other threads and an eventfd under a second reserved
//! token; the device thread runs them between batches, so the netstack needs no lock.

use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use netstack::{InterestSet, Netstack, RxMeta, TxMeta};

use super::{BackendError, FdInterest, NetBackend, RxBuf, RxFrame, TxFrame};
use crate::net::features::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};
use crate::net::header::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Ethernet header length (the netstack never builds VLAN-tagged frames).
const ETH_HDR_LEN: usize = 14;
/// Offset of the checksum field in a TCP header.
const TCP_CSUM_OFFSET: u16 = 16;
/// Poll token of the policy-change eventfd (the netstack numbers its sockets from 0 upwards).
const POLICY_TOKEN: u64 = u64::MAX;
/// Poll token of the control eventfd ([`UserBackend::controlled_by`]).
const CONTROL_TOKEN: u64 = u64::MAX - 1;
/// Most control tasks run per wake-up; the rest wait for the next loop round.
const TASKS_PER_WAKE: usize = 64;

/// Work for the netstack, run on the device thread (see [`StackControl`]).
pub type StackTask = Box<dyn FnOnce(&mut Netstack) + Send>;

/// The sending side of a [`UserBackend`]'s control queue: other threads hand it closures
/// that run on the device thread with the netstack. Tasks queued before the device runs
/// (the guest has not activated it yet) wait and run first thing when it does.
#[derive(Clone, Debug)]
pub struct StackControl {
    tasks: Sender<StackTask>,
    wake: Arc<OnceLock<EventFd>>,
}

/// Why a task could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum StackControlError {
    /// The backend was dropped (the VM stopped).
    #[error("the network device is gone: the VM has stopped")]
    Gone,
}

impl StackControl {
    /// A control queue; the receiving half goes to [`UserBackend::controlled_by`].
    pub fn new() -> (StackControl, Receiver<StackTask>) {
        let (tasks, rx) = std::sync::mpsc::channel();
        (
            StackControl {
                tasks,
                wake: Arc::new(OnceLock::new()),
            },
            rx,
        )
    }

    /// Queues `task` and wakes the device thread.
    pub fn run(&self, task: StackTask) -> Result<(), StackControlError> {
        self.tasks.send(task).map_err(|_| StackControlError::Gone)?;
        if let Some(evt) = self.wake.get() {
            let _ = evt.write(1);
        }
        Ok(())
    }
}

/// Adapts a [`Netstack`] to the [`NetBackend`] trait.
pub struct UserBackend {
    stack: Netstack,
    fds: InterestSet,
    /// `fds` as the list [`NetBackend::interests`] hands out.
    wanted: Vec<FdInterest>,
    features: u64,
    /// Written whenever the flow policy changes; see [`UserBackend::rejudge_on`].
    policy_changed: Option<Arc<EventFd>>,
    /// Control tasks and the eventfd that announces them; see [`UserBackend::controlled_by`].
    control: Option<(Arc<OnceLock<EventFd>>, Receiver<StackTask>)>,
}

impl std::fmt::Debug for UserBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserBackend")
            .field("fds", &self.fds.len())
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

impl UserBackend {
    /// Wraps `stack`. Its frame size and checksum duty for the guest direction are set when
    /// the guest activates the device, from the features it negotiated; the device should
    /// announce the netstack's MTU (`NetConfig::mtu` of the device = [`Netstack::mtu`]).
    pub fn new(stack: Netstack) -> Self {
        Self {
            stack,
            fds: InterestSet::new(),
            wanted: Vec::new(),
            features: 0,
            policy_changed: None,
            control: None,
        }
    }

    /// Runs the tasks queued through `control` (whose receiving half is `tasks`) on the
    /// device thread. Creates the wake-up eventfd now; fails only if that fails.
    pub fn controlled_by(
        mut self,
        control: &StackControl,
        tasks: Receiver<StackTask>,
    ) -> std::io::Result<Self> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        // Tasks queued before now are announced by this first write.
        evt.write(1)?;
        let _ = control.wake.set(evt);
        self.control = Some((control.wake.clone(), tasks));
        self.rebuild_wanted();
        Ok(self)
    }

    /// Drains the control eventfd and runs queued tasks (at most [`TASKS_PER_WAKE`]; with
    /// more waiting, the eventfd is written again so the loop comes back for them).
    fn run_control_tasks(&mut self) {
        let Some((wake, tasks)) = &self.control else {
            return;
        };
        let Some(evt) = wake.get() else {
            return;
        };
        let _ = evt.read();
        for _ in 0..TASKS_PER_WAKE {
            match tasks.try_recv() {
                Ok(task) => task(&mut self.stack),
                Err(_) => return,
            }
        }
        let _ = evt.write(1);
    }

    /// Judges every open flow again whenever `changed` is written (the policy or the network
    /// switch changed), instead of only the flows opened afterwards.
    pub fn rejudge_on(mut self, changed: Arc<EventFd>) -> Self {
        self.policy_changed = Some(changed);
        self.rebuild_wanted();
        self
    }

    /// Rebuilds the list [`NetBackend::interests`] hands out from the interest set, in the
    /// set's order, which is stable while the set is: an unchanged list lets the event loop
    /// skip its per-fd work.
    fn rebuild_wanted(&mut self) {
        self.wanted.clear();
        self.wanted.extend(
            self.fds
                .iter()
                .map(|(token, fd, readable, writable)| FdInterest {
                    fd,
                    token,
                    readable,
                    writable,
                }),
        );
        if let Some(changed) = &self.policy_changed {
            self.wanted.push(FdInterest {
                fd: changed.as_raw_fd(),
                token: POLICY_TOKEN,
                readable: true,
                writable: false,
            });
        }
        if let Some(evt) = self.control.as_ref().and_then(|(wake, _)| wake.get()) {
            self.wanted.push(FdInterest {
                fd: evt.as_raw_fd(),
                token: CONTROL_TOKEN,
                readable: true,
                writable: false,
            });
        }
    }

    /// Drains the policy-change eventfd (several changes in a row need one re-judgement) and
    /// judges every open flow again.
    fn rejudge_flows(&mut self) {
        if let Some(changed) = &self.policy_changed {
            let _ = changed.read();
        }
        let cut = self.stack.rejudge_flows();
        if cut > 0 {
            eprintln!("ringfence: policy change cut {cut} live flow(s)");
        }
    }

    /// The wrapped netstack.
    pub fn stack(&self) -> &Netstack {
        &self.stack
    }

    /// The wrapped netstack, mutably (e.g. to swap its policy gate).
    pub fn stack_mut(&mut self) -> &mut Netstack {
        &mut self.stack
    }

    fn has(&self, bit: u32) -> bool {
        self.features & (1u64 << bit) != 0
    }

    /// The virtio-net header that tells the guest what `meta` says about a frame.
    fn rx_header(&self, meta: &RxMeta) -> VirtioNetHdr {
        let mut h = VirtioNetHdr::default();
        if meta.csum_valid && self.has(VIRTIO_NET_F_GUEST_CSUM) {
            h.flags = VIRTIO_NET_HDR_F_DATA_VALID;
        }
        if let Some(g) = meta.gso {
            let bit = if g.ipv6 {
                VIRTIO_NET_F_GUEST_TSO6
            } else {
                VIRTIO_NET_F_GUEST_TSO4
            };
            if self.has(bit) {
                h.gso_type = if g.ipv6 {
                    VIRTIO_NET_HDR_GSO_TCPV6
                } else {
                    VIRTIO_NET_HDR_GSO_TCPV4
                };
                h.gso_size = g.segment_size;
                h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
                h.csum_start = g.l4_offset;
                h.csum_offset = TCP_CSUM_OFFSET;
            }
        }
        h
    }
}

impl NetBackend for UserBackend {
    fn name(&self) -> &str {
        "user"
    }

    fn activate(&mut self, features: u64) -> Result<(), BackendError> {
        self.features = features;
        let tso = self.has(VIRTIO_NET_F_GUEST_TSO4) || self.has(VIRTIO_NET_F_GUEST_TSO6);
        let max_rx_frame = if tso {
            // An IPv4 total length or IPv6 payload length of 65535 behind the Ethernet header.
            usize::from(u16::MAX) + ETH_HDR_LEN
        } else {
            usize::from(self.stack.mtu()) + ETH_HDR_LEN
        };
        self.stack
            .set_guest_rx_offloads(max_rx_frame, !self.has(VIRTIO_NET_F_GUEST_CSUM));
        Ok(())
    }

    fn send(&mut self, frame: &TxFrame<'_>) -> Result<(), BackendError> {
        let meta = TxMeta {
            csum_partial: frame.header.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0,
            gso_size: frame.header.is_gso().then_some(frame.header.gso_size),
        };
        self.stack
            .handle_guest_frame(frame.frame, meta, Instant::now());
        Ok(())
    }

    fn recv(&mut self, buf: RxBuf<'_>) -> Result<Option<RxFrame>, BackendError> {
        Ok(self
            .stack
            .next_guest_frame(buf.frame, Instant::now())
            .map(|(len, meta)| RxFrame::Frame {
                len,
                header: self.rx_header(&meta),
            }))
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.stack
            .metrics()
            .counters()
            .into_iter()
            .map(|(name, v)| (format!("netstack_{name}"), v))
            .collect()
    }

    fn rx_frame_len(&mut self) -> Option<usize> {
        self.stack.next_guest_frame_len()
    }

    fn rx_pending(&self) -> Option<bool> {
        Some(self.stack.has_pending_guest_frames())
    }

    fn interests(&mut self, _rx_space: bool, out: &mut Vec<FdInterest>) {
        if self.fds.apply(self.stack.take_interest_changes()) {
            self.rebuild_wanted();
        }
        out.extend_from_slice(&self.wanted);
    }

    fn on_fd_ready(&mut self, token: u64, readable: bool, writable: bool) {
        if token == POLICY_TOKEN && self.policy_changed.is_some() {
            self.rejudge_flows();
            return;
        }
        if token == CONTROL_TOKEN && self.control.is_some() {
            self.run_control_tasks();
            return;
        }
        self.stack
            .on_fd_ready(token, readable, writable, Instant::now());
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        self.stack.next_deadline()
    }

    fn on_timer(&mut self, now: Instant) {
        self.stack.on_timer(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> UserBackend {
        let stack = Netstack::new(netstack::NetConfig::default()).expect("netstack");
        UserBackend::new(stack)
    }

    #[test]
    fn without_a_policy_signal_only_the_netstack_is_polled() {
        let mut b = backend();
        let mut out = Vec::new();
        b.interests(true, &mut out);
        assert!(out.iter().all(|i| i.token != POLICY_TOKEN));
    }

    #[test]
    fn control_tasks_queued_before_the_device_runs_are_run_when_it_polls() {
        let (control, tasks) = StackControl::new();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..3 {
            let ran = ran.clone();
            control
                .run(Box::new(move |_stack: &mut Netstack| {
                    ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }))
                .expect("queue");
        }
        let mut b = backend().controlled_by(&control, tasks).expect("eventfd");
        let mut out = Vec::new();
        b.interests(true, &mut out);
        assert_eq!(out.iter().filter(|i| i.token == CONTROL_TOKEN).count(), 1);
        b.on_fd_ready(CONTROL_TOKEN, true, false);
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 3);
        drop(b);
        assert!(
            control.run(Box::new(|_| {})).is_err(),
            "a dropped backend refuses tasks"
        );
    }

    #[test]
    fn a_policy_change_is_polled_and_drained_by_the_backend_itself() {
        let changed = Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut b = backend().rejudge_on(changed.clone());
        let mut out = Vec::new();
        b.interests(true, &mut out);
        let policy: Vec<_> = out.iter().filter(|i| i.token == POLICY_TOKEN).collect();
        assert_eq!(policy.len(), 1, "the eventfd is in the poll set once");
        assert_eq!(policy[0].fd, changed.as_raw_fd());
        assert!(policy[0].readable && !policy[0].writable);

        // The list stays identical between changes (the event loop's fast path relies on it).
        let mut again = Vec::new();
        b.interests(true, &mut again);
        assert_eq!(out, again);

        changed.write(1).expect("signal");
        changed.write(1).expect("signal");
        b.on_fd_ready(POLICY_TOKEN, true, false);
        let err = changed
            .read()
            .expect_err("both changes were drained by one re-judgement");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
}
