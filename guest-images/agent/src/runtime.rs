//! The PID-1-only layer: mounts, console, network ioctls, running the command, reaping, and
//! reporting its status through the exit port before powering off.
//!
//! Everything here needs to be PID 1 in a guest (mount, ioperm, reboot); the decisions it
//! executes come from the pure modules ([`crate::cmdline`], [`crate::netplan`],
//! [`crate::status`]). Failures are printed on the console with what to do, then reported as
//! [`status::AGENT_FAILURE`]; nothing here panics on input.

use std::ffi::{CString, OsString};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::cmdline::{self, AgentConfig};
use crate::host_files;
use crate::netplan::{self, NetStep};
use crate::status::{self, Outcome};

/// The PATH commands see.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the guest: set up, run the command, report, power off. Never returns.
pub fn run_as_init() -> ! {
    mount_filesystems();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let has_eth0 = std::path::Path::new("/sys/class/net/eth0").exists();
    let mut config = match cmdline::parse(&cmdline, has_eth0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringfence-agent: {e}");
            report(status::AGENT_FAILURE);
        }
    };
    install_host_files(&mut config);
    crate::vsock_service::start();
    for step in netplan::plan(&config.net, &config.dns) {
        if let Err(e) = execute(&step) {
            eprintln!("ringfence-agent: network step {step:?} failed: {e}");
            report(status::AGENT_FAILURE);
        }
    }
    let code = status::encode(run_command(&config));
    report(code);
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
    ) else {
        return;
    };
    // SAFETY: all three are valid NUL-terminated strings that outlive the call; data is null.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            eprintln!("ringfence-agent: mount {fstype} on {target}: {err}");
        }
    }
}

fn mount_filesystems() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    mount("tmpfs", "/run", "tmpfs");
    if root_is_read_only() {
        writable_etc();
    }
}

/// Whether `/` is mounted read-only (a root drive shared between VMs, as Kata boots them).
fn root_is_read_only() -> bool {
    // SAFETY: statvfs is plain data, all-zero is a valid value, and the call only fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated literal and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c"/".as_ptr(), &mut st) };
    rc == 0 && st.f_flag & libc::ST_RDONLY != 0
}

/// Puts a writable copy of `/etc` (on the `/run` tmpfs) over the read-only one: the agent
/// and the DHCP script write `resolv.conf` and the CA bundle there.
fn writable_etc() {
    let copy = std::path::Path::new("/run/etc");
    if let Err(e) = copy_tree(std::path::Path::new("/etc"), copy) {
        eprintln!("ringfence-agent: the root is read-only and /etc cannot be copied: {e}");
        return;
    }
    // SAFETY: both paths are NUL-terminated literals; a bind mount changes no memory of ours.
    let rc = unsafe {
        libc::mount(
            c"/run/etc".as_ptr(),
            c"/etc".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        eprintln!(
            "ringfence-agent: the root is read-only and /etc cannot be made writable: {}",
            io::Error::last_os_error()
        );
    }
}

/// Copies the directory tree `from` to `to` (files, directories, symbolic links).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Installs what the VMM shipped ([`host_files`]): the interception CA into the trust store
/// (and the variables that point TLS stacks at it), secret placeholders into the command's
/// environment. Variables from the command line win over both.
fn install_host_files(config: &mut AgentConfig) {
    let mut extra = Vec::new();
    if let Ok(ca) = std::fs::read(host_files::CA_FILE) {
        let bundle = std::path::Path::new(host_files::SYSTEM_BUNDLE);
        let existing = std::fs::read(bundle).unwrap_or_default();
        let written = bundle
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(bundle, host_files::bundle_with(&existing, &ca)));
        match written {
            Ok(()) => extra.extend(host_files::trust_env()),
            Err(e) => eprintln!(
                "ringfence-agent: cannot install the TLS interception CA into {}: {e}",
                host_files::SYSTEM_BUNDLE
            ),
        }
    }
    if let Ok(text) = std::fs::read(host_files::ENV_FILE) {
        extra.extend(host_files::parse_env(&text));
    }
    extra.retain(|(k, _)| !config.env.iter().any(|(have, _)| have == k));
    config.env.splice(0..0, extra);
}

/// Runs the command with the console as stdio, reaping every orphan until it ends.
fn run_command(config: &AgentConfig) -> Outcome {
    let argv: Vec<OsString> = match &config.argv {
        Some(a) => a.iter().map(|s| OsString::from_vec(s.clone())).collect(),
        None => vec![OsString::from("/bin/sh")],
    };
    let Some((prog, args)) = argv.split_first() else {
        return Outcome::SpawnFailed(libc::ENOENT);
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("TERM", "linux")
        .current_dir(OsString::from_vec(config.cwd.clone()));
    for (k, v) in &config.env {
        cmd.env(OsString::from_vec(k.clone()), OsString::from_vec(v.clone()));
    }
    // The agent leads the session that has the console as its controlling terminal, and the
    // command runs in a process group of its own in the foreground, so a shell has job
    // control. Not the command's own session: when a session leader exits, Linux hangs up
    // its controlling terminal, and the hang-up discards output still waiting in the serial
    // driver — with two vCPUs the command's last line was often lost that way.
    take_console();
    // SAFETY: setpgid is async-signal-safe and touches no state of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringfence-agent: cannot run {prog:?}: {e}");
            return Outcome::SpawnFailed(e.raw_os_error().unwrap_or(libc::ENOENT));
        }
    };
    let pid = child.id() as libc::pid_t;
    give_console_to(pid);
    loop {
        let mut raw = 0;
        // SAFETY: `raw` is a valid out-pointer; waiting for any child is what PID 1 must do.
        let got = unsafe { libc::waitpid(-1, &mut raw, 0) };
        if got == pid {
            return status::from_wait_status(raw);
        }
        if got > 0 {
            // Maybe an agent thread's child (the vsock service's EXEC): hand its status over.
            crate::reaper::record(got, raw);
        }
        if got < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Outcome::Exited(i32::from(status::AGENT_FAILURE));
        }
    }
}

/// Makes the agent the leader of a session whose controlling terminal is the console (stdin);
/// best effort: without it the command simply has no job control.
fn take_console() {
    // SAFETY: setsid and ioctl(TIOCSCTTY) act on this process and the descriptor only; the
    // agent runs as root, which TIOCSCTTY's argument 1 (take it from any other session) needs.
    unsafe {
        libc::setsid();
        libc::ioctl(0, libc::TIOCSCTTY, 1);
    }
}

/// Puts `pid`'s process group (made by the child too, whichever runs first) in the
/// console's foreground.
fn give_console_to(pid: libc::pid_t) {
    // SAFETY: setpgid and tcsetpgrp only change process-group bookkeeping in the kernel;
    // the agent is in the console's foreground group, so tcsetpgrp raises no SIGTTOU.
    unsafe {
        libc::setpgid(pid, pid);
        libc::tcsetpgrp(0, pid);
    }
}

/// Waits (at most `limit`) until the console has sent what was written to it: the kernel's
/// serial driver transmits from its buffer on interrupts (with two vCPUs, possibly on the
/// other one, later), and the VMM stops the VM the moment the status reaches the exit port,
/// so output still queued then would be lost.
fn drain_console(limit: std::time::Duration) {
    let (done, wait) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
                // SAFETY: tcdrain only waits on the descriptor; on one that is not a
                // terminal it fails with ENOTTY, which is fine.
                unsafe { libc::tcdrain(fd) };
            }
            let _ = done.send(());
        });
    if spawned.is_ok() {
        let _ = wait.recv_timeout(limit);
    }
}

/// Writes `code` to the exit port, then powers off if the VMM did not stop us. Never returns.
pub fn report(code: u8) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    drain_console(std::time::Duration::from_secs(2));
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    let allowed = unsafe { libc::ioperm(libc::c_ulong::from(status::EXIT_PORT), 4, 1) } == 0;
    if allowed {
        let value = u32::from(code);
        // SAFETY: ioperm granted access to ports 0xf4..0xf8; a 32-bit `out` there only
        // reaches the VMM's exit device.
        unsafe {
            std::arch::asm!("out dx, eax", in("dx") status::EXIT_PORT, in("eax") value,
                options(nomem, nostack, preserves_flags));
        }
    }
    eprintln!("ringfence-agent: command status {code}; powering off");
    // SAFETY: reboot with RB_POWER_OFF is the documented way for init to end the system.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        // SAFETY: pause has no preconditions; PID 1 must never exit.
        unsafe { libc::pause() };
    }
}

fn execute(step: &NetStep) -> io::Result<()> {
    match step {
        NetStep::LinkUp(iface) => with_socket(|s| link_up(s, iface)),
        NetStep::SetAddr {
            iface,
            addr,
            netmask,
        } => with_socket(|s| {
            set_addr(s, iface, libc::SIOCSIFADDR, *addr)?;
            set_addr(s, iface, libc::SIOCSIFNETMASK, *netmask)
        }),
        NetStep::DefaultRoute(gw) => with_socket(|s| default_route(s, *gw)),
        NetStep::Dhcp { argv, .. } => {
            let (prog, args) = argv
                .split_first()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
            let st = Command::new(prog).args(args).env("PATH", PATH).status()?;
            if st.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "{prog} got no lease ({st}); pass ringfence.ip=A.B.C.D/N for a static address or ringfence.net=none"
                )))
            }
        }
        NetStep::ResolvConf(text) => std::fs::write("/etc/resolv.conf", text),
    }
}

/// An AF_INET datagram socket for interface ioctls, closed after `f`.
fn with_socket<T>(f: impl FnOnce(libc::c_int) -> io::Result<T>) -> io::Result<T> {
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = f(fd);
    // SAFETY: fd is ours and not used after this.
    unsafe { libc::close(fd) };
    r
}

fn ifreq(iface: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data (arrays and a union of plain data); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {iface:?} is too long"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl_checked(
    fd: libc::c_int,
    request: libc::c_ulong,
    arg: *mut libc::c_void,
) -> io::Result<()> {
    // SAFETY: callers pass a pointer to a live struct of the type `request` expects.
    if unsafe { libc::ioctl(fd, request, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn link_up(fd: libc::c_int, iface: &str) -> io::Result<()> {
    let mut req = ifreq(iface)?;
    ioctl_checked(
        fd,
        libc::SIOCGIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl_checked(
        fd,
        libc::SIOCSIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
    )
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and sockaddr has no
    // invalid bit patterns.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_addr(
    fd: libc::c_int,
    iface: &str,
    request: libc::c_ulong,
    addr: Ipv4Addr,
) -> io::Result<()> {
    let mut req = ifreq(iface)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl_checked(fd, request, (&mut req as *mut libc::ifreq).cast())
}

/// The kernel's `struct rtentry` (include/uapi/linux/route.h), absent from the libc crate.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

fn default_route(fd: libc::c_int, gw: Ipv4Addr) -> io::Result<()> {
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gw),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl_checked(fd, libc::SIOCADDRT, (&mut rt as *mut RtEntry).cast())
}
