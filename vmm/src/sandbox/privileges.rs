//! Process-level least privilege: closing inherited descriptors, `no_new_privs`, dropping
//! capabilities a root start does not need, and keeping guest memory out of core dumps.
//!
//! Capabilities are per thread on Linux: [`drop_capabilities`] changes the calling thread
//! and the threads it creates afterwards, so the VMM calls it before it starts any thread.

use std::io;

use super::SandboxError;

/// `CAP_NET_RAW`: raw ICMP sockets, opened lazily by the netstack's echo relay.
pub const CAP_NET_RAW: u32 = 13;
/// `CAP_SYS_NICE`: a vCPU thread setting a nice value below the process's own.
pub const CAP_SYS_NICE: u32 = 23;
/// `CAP_SETPCAP`: needed to drop from the bounding set.
const CAP_SETPCAP: u32 = 8;

/// Closes every descriptor above 2 that the process inherited. Call it first thing in
/// `main`, before anything opens a descriptor of its own.
pub fn close_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; nothing in the process owns one above 2
    // yet (this runs before anything opens one).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.9: list /proc/self/fd, then close what was listed (except the
    // directory's own descriptor, which the iterator closes when dropped).
    let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in listed {
        // SAFETY: `fd` was inherited (nothing of ours is open yet); closing an fd that is
        // already gone (the listing's own) fails harmlessly with EBADF.
        unsafe {
            libc::close(fd);
        }
    }
    Ok(())
}

/// Sets `PR_SET_NO_NEW_PRIVS`: no later `execve` can gain privileges (set-uid, file caps).
pub fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS only reads its integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SandboxError::Privileges(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            io::Error::last_os_error()
        )))
    }
}

/// Marks `len` bytes at `addr` (a guest RAM mapping) `MADV_DONTDUMP`.
///
/// # Safety
/// `addr..addr+len` must be a mapping the caller owns.
pub unsafe fn exclude_from_core_dumps(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own mapping; MADV_DONTDUMP only
    // changes a VMA flag, never the contents.
    let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTDUMP) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's permitted capabilities as a 64-bit set.
pub fn permitted_capabilities() -> Result<u64, SandboxError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData structs (version 3) into `data`, which has room.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(SandboxError::Privileges(format!(
            "capget: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
}

/// Drops every capability of the calling thread except those in `keep` (bit n = capability
/// n): the bounding set and ambient set too, so no later thread or exec regains them.
/// Returns the permitted set before the drop. Without capabilities it does nothing.
pub fn drop_capabilities(keep: u64) -> Result<u64, SandboxError> {
    let before = permitted_capabilities()?;
    if before == 0 {
        return Ok(0);
    }
    let fail =
        |what: &str| SandboxError::Privileges(format!("{what}: {}", io::Error::last_os_error()));
    // SAFETY: prctl with PR_CAP_AMBIENT_CLEAR_ALL only reads its integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(fail("clearing the ambient capabilities"));
    }
    // The bounding set needs CAP_SETPCAP, so it goes before the capset below. A thread that
    // started a VM before has given CAP_SETPCAP up with the rest: it can no longer narrow its
    // bounding set, and need not (no_new_privs already stops an exec from regaining anything;
    // the capset below still narrows what the thread holds).
    let can_drop_bounding = before & (1 << CAP_SETPCAP) != 0;
    for cap in (0..64u32).take_while(|_| can_drop_bounding) {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // A thread that started a VM before has dropped its bounding set already (and with it
        // CAP_SETPCAP): only what is still there needs dropping.
        // SAFETY: prctl with PR_CAPBSET_READ only reads its integer argument.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if present == 0 {
            continue;
        }
        if present < 0 {
            break; // past the kernel's last capability
        }
        // SAFETY: prctl with PR_CAPBSET_DROP only reads its integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(fail("dropping the capability bounding set"));
        }
    }
    set_capabilities(before & keep)?;
    Ok(before)
}

/// Narrows the calling thread's effective and permitted sets to `keep` (no privilege
/// needed to give capabilities up); the bounding set stays as [`drop_capabilities`] left it.
pub fn narrow_capabilities(keep: u64) -> Result<(), SandboxError> {
    let before = permitted_capabilities()?;
    if before & !keep == 0 {
        return Ok(());
    }
    set_capabilities(before & keep)
}

fn set_capabilities(kept: u64) -> Result<(), SandboxError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: kept as u32,
            permitted: kept as u32,
            inheritable: 0,
        },
        CapData {
            effective: (kept >> 32) as u32,
            permitted: (kept >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads the header and two CapData structs (version 3) we own.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(SandboxError::Privileges(format!(
            "capset: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_capabilities_on_a_thread_keeps_only_what_was_asked() {
        // A throwaway thread: capabilities are per thread, the test process keeps its own.
        let result = std::thread::spawn(|| {
            let before = drop_capabilities(1 << CAP_NET_RAW)?;
            Ok::<_, SandboxError>((before, permitted_capabilities()?))
        })
        .join()
        .expect("thread");
        let (before, after) = result.expect("drop");
        assert_eq!(after, before & (1 << CAP_NET_RAW));
    }
}
