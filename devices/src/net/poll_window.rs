//! How long the worker keeps busy-polling the rings after the last activity.
//!
//! While it polls, the guest needs no kicks; once the window closes the worker re-enables
//! notifications and sleeps, and the guest's next frame costs a kick (an exit, ~7 µs on an
//! idle host and far more when the host is loaded, design §3 item 4) plus the worker's
//! wake-up. A fixed window shorter than the guest's request/response gap makes every
//! exchange pay both, and the worker never gets back to polling. So the window adapts, in
//! the manner of KVM's halt polling: a guest kick that arrives soon after the window closed
//! (a longer window would have caught it) grows the window, up to a ceiling; a sleep longer
//! than the ceiling (the guest really went quiet) shrinks it back toward the floor. Wake-ups
//! by the backend (host sockets, the tap) cost the guest nothing and change nothing.

use std::time::Duration;

/// The current polling window and its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PollWindow {
    floor: Duration,
    ceiling: Duration,
    current: Duration,
}

impl PollWindow {
    /// A window starting at `floor` that may grow to `ceiling` (raised to `floor` if lower).
    /// A zero floor disables polling altogether.
    pub(crate) fn new(floor: Duration, ceiling: Duration) -> Self {
        let ceiling = if floor.is_zero() {
            Duration::ZERO
        } else {
            ceiling.max(floor)
        };
        Self {
            floor,
            ceiling,
            current: floor,
        }
    }

    /// How long to keep polling after the last activity.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// The worker slept and woke `idle` after its last activity; `guest_kick` says whether a
    /// guest kick was among the reasons it woke.
    pub(crate) fn after_sleep(&mut self, idle: Duration, guest_kick: bool) {
        if idle > self.ceiling {
            self.current = (self.current / 2).max(self.floor);
        } else if guest_kick {
            self.current = (self.current * 2).max(idle).min(self.ceiling);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn kicks_just_after_the_window_grow_it_up_to_the_ceiling() {
        let mut w = PollWindow::new(100 * US, 1000 * US);
        assert_eq!(w.current(), 100 * US);
        w.after_sleep(150 * US, true);
        assert_eq!(w.current(), 200 * US);
        w.after_sleep(700 * US, true);
        assert_eq!(w.current(), 700 * US, "grows at least to the gap it missed");
        w.after_sleep(900 * US, true);
        assert_eq!(w.current(), 1000 * US, "never past the ceiling");
    }

    #[test]
    fn backend_wakeups_leave_it_and_long_sleeps_shrink_it_to_the_floor() {
        let mut w = PollWindow::new(100 * US, 1000 * US);
        w.after_sleep(500 * US, true);
        assert_eq!(w.current(), 500 * US);
        w.after_sleep(600 * US, false);
        assert_eq!(
            w.current(),
            500 * US,
            "a host-side wake-up costs the guest nothing"
        );
        w.after_sleep(Duration::from_secs(1), true);
        assert_eq!(w.current(), 250 * US);
        for _ in 0..10 {
            w.after_sleep(Duration::from_secs(1), false);
        }
        assert_eq!(w.current(), 100 * US);
    }

    #[test]
    fn a_zero_floor_keeps_polling_disabled() {
        let mut w = PollWindow::new(Duration::ZERO, 1000 * US);
        w.after_sleep(10 * US, true);
        assert_eq!(w.current(), Duration::ZERO);
    }
}
