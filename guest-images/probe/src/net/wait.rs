//! What the stack does when a poll moved no frame: spin on (`probe.wait=poll`,
//! the default, the lowest latency when the vCPU has a core to itself), or, after
//! `probe.halt_after_us` of such polls, halt the vCPU until the device uses a
//! buffer or smoltcp's next timer is due (`probe.wait=halt`, what a Linux guest
//! does: an idle guest then leaves its host core to others, which is what many
//! VMs on few cores need).
//!
//! Halting needs the transport's interrupt line, which the command line names
//! (`virtio_mmio.device=SIZE@BASE:IRQ`); without it, or without a local APIC,
//! the stack keeps polling and says why in its JSON (`wait`).

use alloc::format;
use alloc::string::String;

use smoltcp::time::Duration;

use super::stack::NetError;
use super::virtio_net::VirtioNet;
use crate::apic::Apic;
use crate::clock::Clock;
use crate::cmdline::Cmdline;

/// Default for `probe.halt_after_us`: how long polls may find nothing before a halt.
pub const DEFAULT_HALT_AFTER_US: u64 = 20;
/// Longest single halt, so the scenarios' own deadlines are looked at in time.
const MAX_SLEEP_NS: u64 = 10_000_000;

/// How the stack waits.
enum Mode {
    /// Spin: poll again at once.
    Poll,
    /// Halt once polls found nothing for `after_ticks` TSC ticks.
    Halt { apic: Apic, after_ticks: u64 },
}

/// The stack's waiting policy and what it did.
pub struct Waiter {
    mode: Mode,
    /// Why `probe.wait=halt` fell back to polling, if it did.
    fallback: Option<String>,
    /// TSC at the first of the current run of polls that moved nothing.
    idle_since: Option<u64>,
    /// Halts so far.
    pub sleeps: u64,
    /// Waits that found used buffers while arming the interrupt, so did not halt.
    pub sleeps_skipped: u64,
}

impl Waiter {
    /// Reads `probe.wait=` and `probe.halt_after_us=`; with `halt`, programs the APIC
    /// for the device's line `irq`.
    pub fn from_cmdline(
        cmdline: &Cmdline<'_>,
        clock: &Clock,
        irq: Option<u32>,
    ) -> Result<Waiter, NetError> {
        let after_us = match cmdline.get("probe.halt_after_us") {
            None => DEFAULT_HALT_AFTER_US,
            Some(v) => v.parse::<u64>().map_err(|_| NetError::BadArg {
                key: "probe.halt_after_us",
                value: v.into(),
                expected: "microseconds of empty polls before a halt, e.g. 20",
            })?,
        };
        let mut fallback = None;
        let mode = match cmdline.get("probe.wait") {
            None | Some("poll") => Mode::Poll,
            Some("halt") => match Apic::init(irq) {
                Ok(apic) => Mode::Halt {
                    apic,
                    after_ticks: clock.ns_to_ticks(after_us.saturating_mul(1000)),
                },
                Err(e) => {
                    fallback = Some(format!("{e}"));
                    Mode::Poll
                }
            },
            Some(other) => {
                return Err(NetError::BadArg {
                    key: "probe.wait",
                    value: other.into(),
                    expected: "poll (spin while idle) or halt (sleep until the device interrupts)",
                })
            }
        };
        Ok(Waiter {
            mode,
            fallback,
            idle_since: None,
            sleeps: 0,
            sleeps_skipped: 0,
        })
    }

    /// How the stack waits, for the JSON line: `poll`, `halt`, or why halting fell back.
    pub fn describe(&self) -> String {
        match (&self.mode, &self.fallback) {
            (Mode::Halt { .. }, _) => String::from("halt"),
            (Mode::Poll, None) => String::from("poll"),
            (Mode::Poll, Some(why)) => format!("poll (halt unavailable: {why})"),
        }
    }

    /// A poll moved frames: the next idle run starts afresh.
    pub fn busy(&mut self) {
        self.idle_since = None;
    }

    /// A poll at TSC `now` moved nothing: whether the run of empty polls is now long
    /// enough to halt.
    pub fn idle(&mut self, now: u64) -> bool {
        let Mode::Halt { after_ticks, .. } = self.mode else {
            return false;
        };
        let since = *self.idle_since.get_or_insert(now);
        now.saturating_sub(since) >= after_ticks
    }

    /// Halts until `dev` uses a buffer the stack waits for or `next_timer` (smoltcp's
    /// poll delay; `None`: no timer pending) passes, at most [`MAX_SLEEP_NS`].
    pub fn sleep(&mut self, dev: &mut VirtioNet, next_timer: Option<Duration>) {
        let Mode::Halt { apic, .. } = &self.mode else {
            return;
        };
        let ns = next_timer.map_or(MAX_SLEEP_NS, |d| d.total_micros().saturating_mul(1000));
        if ns == 0 {
            return;
        }
        let ns = ns.min(MAX_SLEEP_NS) as u32;
        if dev.sleep_until_used(apic, ns) {
            self.sleeps += 1;
        } else {
            self.sleeps_skipped += 1;
        }
    }
}
