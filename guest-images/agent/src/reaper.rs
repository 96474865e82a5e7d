//! Exit statuses of the agent's own children when PID 1's reaping loop collects them first.
//!
//! As PID 1 the agent waits for *any* child (orphans are re-parented to it), so a child
//! another agent thread started (the vsock service's `EXEC`) can be reaped by that loop before
//! the thread's own `waitpid` runs, which then fails with `ECHILD`. The loop records every
//! status it collects here ([`record`]); a thread waits for its child with [`wait_child`],
//! which takes the status from whichever side got it. The record keeps the last
//! [`KEPT`] statuses, so orphans' statuses cannot make it grow.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Statuses kept for threads that have not asked yet.
pub const KEPT: usize = 256;

static REAPED: Mutex<VecDeque<(libc::pid_t, libc::c_int)>> = Mutex::new(VecDeque::new());
static ARRIVED: Condvar = Condvar::new();

/// Called by the reaping loop for a child it collected.
pub fn record(pid: libc::pid_t, raw_status: libc::c_int) {
    let mut r = REAPED.lock().unwrap_or_else(PoisonError::into_inner);
    if r.len() == KEPT {
        r.pop_front();
    }
    r.push_back((pid, raw_status));
    ARRIVED.notify_all();
}

fn take(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut r = REAPED.lock().unwrap_or_else(PoisonError::into_inner);
    let at = r.iter().position(|(p, _)| *p == pid)?;
    r.remove(at).map(|(_, s)| s)
}

/// Waits for child `pid` to end and returns its raw wait status, whether this thread or the
/// reaping loop collects it.
pub fn wait_child(pid: libc::pid_t) -> libc::c_int {
    loop {
        let mut raw = 0;
        // SAFETY: a non-blocking waitpid for our own child; `raw` is a valid out-pointer.
        let got = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
        if got == pid {
            return raw;
        }
        if let Some(status) = take(pid) {
            return status;
        }
        // Not yet ended (got == 0), or collected by the loop just now (ECHILD): wait for the
        // loop's record or poll again shortly.
        let r = REAPED.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = ARRIVED.wait_timeout(r, Duration::from_millis(20));
    }
}

#[cfg(test)]
// The children are waited for with waitpid (the point of these tests), not Child::wait.
#[allow(clippy::zombie_processes)]
mod tests {
    use super::*;

    #[test]
    fn a_status_the_loop_collected_reaches_the_waiting_thread() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 4"])
            .spawn()
            .expect("spawn");
        let pid = child.id() as libc::pid_t;
        // Play the reaping loop: collect the child first and record it.
        let mut raw = 0;
        // SAFETY: waiting for our own child; `raw` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut raw, 0) }, pid);
        record(pid, raw);
        let status = wait_child(pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 4);
    }

    #[test]
    fn a_thread_collects_its_own_child_when_the_loop_does_not() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 6"])
            .spawn()
            .expect("spawn");
        let status = wait_child(child.id() as libc::pid_t);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 6);
    }

    #[test]
    fn the_record_is_bounded() {
        for pid in 0..(KEPT as libc::pid_t + 10) {
            record(1_000_000 + pid, 0);
        }
        assert!(REAPED.lock().unwrap().len() <= KEPT);
    }
}
