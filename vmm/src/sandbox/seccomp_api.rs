//! The allow-list of `ringfence api`'s server thread ([`ThreadKind::Api`](super::seccomp::ThreadKind)).
//!
//! The thread runs a single-threaded tokio runtime with hyper on the API socket, and the
//! calls it serves name files: boot-source and drive images are checked (`statx`, `open`,
//! `lseek`), the logger and metrics files opened for appending, a running drive's new image
//! opened for the swap. So unlike the VM's threads it may open paths (it has no `EACCES`
//! filter for them); it cannot create sockets, processes or threads, touch KVM, or start a
//! VM: `InstanceStart` hands the VM configuration to the main thread, which starts the VM on a
//! thread of its own.

use super::seccomp::{allow, allow_arg_in, common, Rules, FIONBIO};
use super::SandboxError;
use seccompiler::SeccompCmpArgLen as Len;

/// Adds the API thread's syscalls to `rules`.
pub(super) fn api(rules: &mut Rules) -> Result<(), SandboxError> {
    common(rules)?;
    allow(
        rules,
        &[
            // tokio's reactor and waker.
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_eventfd2,
            // Connections on the (already bound) API socket.
            libc::SYS_accept4,
            libc::SYS_getsockopt,
            libc::SYS_setsockopt,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_shutdown,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_readv,
            // The files calls name.
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_statx,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_lseek,
            libc::SYS_poll,
            libc::SYS_ppoll,
        ],
    );
    allow_arg_in(rules, libc::SYS_ioctl, 1, Len::Dword, &[FIONBIO])?;
    Ok(())
}
