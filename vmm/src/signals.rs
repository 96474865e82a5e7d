//! Process signals: a no-op handler for the vCPU kick signal (so `KVM_RUN` returns `EINTR`),
//! and, only for a VM started with [`crate::Vm::route_stop_signals`] (the CLI),
//! SIGINT/SIGTERM/SIGHUP handlers that wake that VM's supervisor through its eventfd.
//! Library users with many VMs per process get the kick handler only.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

use vmm_sys_util::eventfd::EventFd;

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn vcpu_kick_signal() -> i32 {
    libc::SIGRTMIN()
}

static STOP_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
static INSTALL_KICK: Once = Once::new();

extern "C" fn noop_handler(_: libc::c_int) {}

extern "C" fn stop_handler(sig: libc::c_int) {
    LAST_STOP_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = STOP_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `fd` is an eventfd owned by the running VM
        // (cleared before that eventfd is closed) and `one` is a valid 8-byte buffer.
        unsafe {
            libc::write(fd, (&one as *const u64).cast(), 8);
        }
    }
}

fn install(sig: i32, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting value; we set the handler to a function
    // that only touches atomics and calls write(2), and leave SA_RESTART clear on purpose so
    // that blocking syscalls (KVM_RUN, poll) return EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Installs the vCPU kick handler (once per process).
pub fn install_vcpu_kick_handler() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL_KICK.call_once(|| result = install(vcpu_kick_signal(), noop_handler));
    result
}

/// Routes SIGINT, SIGTERM and SIGHUP to `evt` until the returned guard is dropped. Only one
/// eventfd at a time: fails with `AddrInUse` while another guard is alive.
pub fn route_stop_signals(evt: &EventFd) -> io::Result<StopSignalGuard> {
    use std::os::unix::io::AsRawFd;
    if STOP_EVENT_FD
        .compare_exchange(-1, evt.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "stop signals already go to another running VM in this process (only one VM may use Vm::route_stop_signals at a time)",
        ));
    }
    LAST_STOP_SIGNAL.store(0, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        install(sig, stop_handler)?;
    }
    Ok(StopSignalGuard)
}

/// The stop signal received since [`route_stop_signals`], if any.
pub fn stop_signal() -> Option<i32> {
    match LAST_STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Restores default handling of the stop signals when dropped.
pub struct StopSignalGuard;

impl Drop for StopSignalGuard {
    fn drop(&mut self) {
        STOP_EVENT_FD.store(-1, Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: restoring the default disposition of a standard signal is always valid.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}
