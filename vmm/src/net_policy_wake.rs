//! Makes policy changes reach live flows: the `user` backend wrapped so that the device thread
//! re-judges every open flow (resetting TCP and closing UDP flows the new policy denies) as soon
//! as [`PolicyHandle`](crate::net_policy::PolicyHandle) signals a change, instead of only
//! judging flows opened afterwards.
//!
//! The signal is an eventfd the wrapper adds to the backend's poll set under a reserved token,
//! so the change wakes the device's io_uring loop even when the guest is idle.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use devices::net::backend::user::UserBackend;
use devices::net::backend::{BackendError, FdInterest, NetBackend, RxBuf, RxFrame, TxFrame};
use vmm_sys_util::eventfd::EventFd;

/// Poll token of the policy-change eventfd (the netstack numbers its sockets from 0 upwards).
const POLICY_TOKEN: u64 = u64::MAX;

/// [`UserBackend`] plus the policy-change wake-up.
pub struct PolicyAwareBackend {
    inner: UserBackend,
    changed: Arc<EventFd>,
}

impl PolicyAwareBackend {
    /// Wraps `inner`; `changed` is written whenever the policy or the network switch changes.
    pub fn new(inner: UserBackend, changed: Arc<EventFd>) -> Self {
        PolicyAwareBackend { inner, changed }
    }
}

impl NetBackend for PolicyAwareBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn activate(&mut self, features: u64) -> Result<(), BackendError> {
        self.inner.activate(features)
    }

    fn send(&mut self, frame: &TxFrame<'_>) -> Result<(), BackendError> {
        self.inner.send(frame)
    }

    fn ring_tx_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.ring_tx_fd()
    }

    fn recv(&mut self, buf: RxBuf<'_>) -> Result<Option<RxFrame>, BackendError> {
        self.inner.recv(buf)
    }

    fn rx_frame_len(&mut self) -> Option<usize> {
        self.inner.rx_frame_len()
    }

    fn rx_pending(&self) -> Option<bool> {
        self.inner.rx_pending()
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.inner.counters()
    }

    fn interests(&mut self, rx_space: bool, out: &mut Vec<FdInterest>) {
        self.inner.interests(rx_space, out);
        out.push(FdInterest {
            fd: self.changed.as_raw_fd(),
            token: POLICY_TOKEN,
            readable: true,
            writable: false,
        });
    }

    fn on_fd_ready(&mut self, token: u64, readable: bool, writable: bool) {
        if token == POLICY_TOKEN {
            // Drain the counter; several changes in a row need one re-judgement.
            let _ = self.changed.read();
            let cut = self.inner.stack_mut().rejudge_flows();
            if cut > 0 {
                eprintln!("ringfence: policy change cut {cut} live flow(s)");
            }
            return;
        }
        self.inner.on_fd_ready(token, readable, writable);
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        self.inner.next_deadline()
    }

    fn on_timer(&mut self, now: Instant) {
        self.inner.on_timer(now);
    }
}
