//! The host descriptors a netstack wants polled, as the front end driving it keeps them: the
//! netstack reports changes ([`crate::Netstack::take_interest_changes`]) and an
//! [`InterestSet`] applies them, so a device backend or a test loop knows the whole set.

use std::collections::HashMap;
use std::os::fd::RawFd;

use crate::core::{FdInterest, InterestOp};

/// Token → (descriptor, wants readable, wants writable), as of the last applied change.
#[derive(Debug, Default)]
pub struct InterestSet {
    fds: HashMap<u64, (RawFd, bool, bool)>,
}

impl InterestSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `changes` in order; returns whether there were any.
    pub fn apply(&mut self, changes: Vec<FdInterest>) -> bool {
        let any = !changes.is_empty();
        for c in changes {
            match c.op {
                InterestOp::Add | InterestOp::Modify => {
                    self.fds.insert(c.token, (c.fd, c.readable, c.writable));
                }
                InterestOp::Remove => {
                    self.fds.remove(&c.token);
                }
            }
        }
        any
    }

    /// Number of descriptors in the set.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Every entry as (token, descriptor, readable, writable), in an order that stays the
    /// same while the set does.
    pub fn iter(&self) -> impl Iterator<Item = (u64, RawFd, bool, bool)> + '_ {
        self.fds.iter().map(|(&t, &(fd, r, w))| (t, fd, r, w))
    }

    /// The set as `poll(2)` entries (descriptors wanting neither direction left out), with
    /// the token of each.
    #[cfg(feature = "testkit")]
    pub(crate) fn pollfds(&self) -> (Vec<u64>, Vec<libc::pollfd>) {
        self.iter()
            .filter(|&(_, _, r, w)| r || w)
            .map(|(t, fd, r, w)| {
                let mut events = 0;
                if r {
                    events |= libc::POLLIN;
                }
                if w {
                    events |= libc::POLLOUT;
                }
                (
                    t,
                    libc::pollfd {
                        fd,
                        events,
                        revents: 0,
                    },
                )
            })
            .unzip()
    }

    /// The set as changes that would build it from nothing.
    #[cfg(feature = "testkit")]
    pub(crate) fn to_changes(&self) -> Vec<FdInterest> {
        self.iter()
            .map(|(token, fd, readable, writable)| FdInterest {
                op: InterestOp::Add,
                fd,
                token,
                readable,
                writable,
            })
            .collect()
    }
}
