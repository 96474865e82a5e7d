//! virtio-vsock as the VMM sees it: the `--vsock` settings of a VM, the Unix socket bound
//! before boot, and the device on its virtio-mmio window. The device itself lives in
//! `devices::vsock`.
//!
//! The host side is Firecracker's: host programs connect to the Unix socket `uds_path` and
//! write `CONNECT <port>\n` to reach a guest listener on that port (the device answers
//! `OK <host_port>\n`); a guest connection to the host (CID 2) port `P` is carried to a
//! Unix socket listening at `<uds_path>_<P>`.
//!
//! The socket is bound when the VM is built, before anything boots, so a path in use is
//! reported at once (a live listener is refused, a stale socket file replaced, anything else
//! left alone). It is removed when the VM is torn down, by the thread that tears it down;
//! with seccomp on, that thread may `unlinkat` in the socket's directory and nowhere else
//! (`Sandbox::allow_vmm_unlink_in`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use devices::virtio::mmio::MmioTransport;
use devices::vsock::{Vsock, VsockConfig, VsockMetrics};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::io::MmioDevice;
use crate::kvm::KvmError;

/// The guest context id ringfence gives when none is asked for.
pub const DEFAULT_GUEST_CID: u32 = 3;

/// Longest `uds_path`: `<uds_path>_<port>` must fit a `sockaddr_un` (107 bytes) for every
/// 32-bit port.
pub const MAX_UDS_PATH: usize = devices::vsock::sys::MAX_SOCKET_PATH - "_4294967295".len();

/// A virtio-vsock device (`--vsock`, Firecracker's `PUT /vsock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockSettings {
    /// The guest's context id (3 or more; 0–2 are reserved).
    pub guest_cid: u32,
    /// The Unix socket host programs connect to.
    pub uds_path: PathBuf,
}

/// The window index of the vsock device on a VM with `drives` drives.
pub fn vsock_window(drives: usize) -> u32 {
    crate::block::drive_window(drives)
}

impl FromStr for VsockSettings {
    type Err = String;

    /// Parses `uds=PATH[,cid=N]` (keys in any order).
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected uds=PATH[,cid=N], e.g. --vsock uds=/run/vm1.vsock,cid=3";
        let mut uds = None;
        let mut cid = None;
        for part in s.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "bad --vsock {s:?}: {part:?} is not KEY=VALUE; {usage}"
                ));
            };
            match key {
                "uds" if uds.is_none() => uds = Some(value),
                "cid" if cid.is_none() => cid = Some(value),
                "uds" | "cid" => return Err(format!("bad --vsock {s:?}: {key}= given twice")),
                _ => return Err(format!("bad --vsock {s:?}: unknown key {key:?}; {usage}")),
            }
        }
        let Some(uds) = uds.filter(|u| !u.is_empty()) else {
            return Err(format!("bad --vsock {s:?}: uds=PATH is missing; {usage}"));
        };
        let guest_cid = match cid {
            None => DEFAULT_GUEST_CID,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (3..u32::MAX).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "bad --vsock cid={v}: a guest CID is a number from 3 to 4294967294 (0-2 are reserved)"
                    ))
                }
            },
        };
        let settings = VsockSettings {
            guest_cid,
            uds_path: PathBuf::from(uds),
        };
        settings.validate()?;
        Ok(settings)
    }
}

impl VsockSettings {
    /// Checks what can be checked without touching the file system.
    pub fn validate(&self) -> Result<(), String> {
        if !(3..u32::MAX).contains(&self.guest_cid) {
            return Err(format!(
                "bad vsock guest CID {}: use a number from 3 to 4294967294 (0-2 are reserved)",
                self.guest_cid
            ));
        }
        let len = self.uds_path.as_os_str().len();
        if len > MAX_UDS_PATH {
            return Err(format!(
                "bad --vsock uds={}: {len} bytes is too long; guest connections go to \
                 <uds>_<port>, which must fit a Unix socket address, so use at most {MAX_UDS_PATH}",
                self.uds_path.display()
            ));
        }
        if self.uds_path.file_name().is_none() {
            return Err(format!(
                "bad --vsock uds={}: not a file path",
                self.uds_path.display()
            ));
        }
        Ok(())
    }
}

/// Errors setting up the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockSetupError {
    /// The settings or the socket path are unusable (the message names the value).
    #[error("{0}")]
    Socket(String),
    /// The device could not be created.
    #[error("virtio-vsock: {0}")]
    Device(String),
    /// Registering eventfds with KVM failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// The socket file: removed (`unlinkat` in its directory) when dropped.
#[derive(Debug)]
struct SocketFile {
    dir: OwnedFd,
    name: CString,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // SAFETY: a directory descriptor we own and a NUL-terminated name; flags 0 (the one
        // form the VMM thread's filter allows).
        let _ = unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
    }
}

/// The listening socket of a VM's vsock device, bound before boot.
#[derive(Debug)]
pub struct BoundVsock {
    listener: UnixListener,
    file: SocketFile,
}

impl BoundVsock {
    /// The directory holding the socket file, open `O_PATH` (for the teardown's `unlinkat`).
    pub fn dir_fd(&self) -> RawFd {
        self.file.dir.as_raw_fd()
    }
}

/// Binds `settings.uds_path`: a live listener there is refused, a stale socket replaced.
pub fn bind(settings: &VsockSettings) -> Result<BoundVsock, VsockSetupError> {
    settings.validate().map_err(VsockSetupError::Socket)?;
    let path = &settings.uds_path;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| CString::new(n.as_bytes()).ok())
        .ok_or_else(|| {
            VsockSetupError::Socket(format!(
                "bad --vsock uds={}: not a file path",
                path.display()
            ))
        })?;
    let dir_c = CString::new(parent.as_os_str().as_bytes()).map_err(|_| {
        VsockSetupError::Socket(format!("bad --vsock uds={}: NUL in path", path.display()))
    })?;
    // SAFETY: a NUL-terminated path; O_PATH opens nothing but a reference to the directory.
    let fd = unsafe {
        libc::open(
            dir_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(VsockSetupError::Socket(format!(
            "--vsock uds={}: its directory {}: {}",
            path.display(),
            parent.display(),
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener =
        crate::unix_socket::bind_listener(path, "--vsock uds=").map_err(VsockSetupError::Socket)?;
    Ok(BoundVsock {
        listener,
        file: SocketFile { dir, name },
    })
}

/// A vsock device ready to be placed on the bus.
pub struct AttachedVsock {
    /// Guest-physical base of the window.
    pub base: u64,
    /// The device, as the bus takes it (removes the socket file when dropped).
    pub device: Box<dyn MmioDevice>,
    /// The command-line word that announces it to the guest.
    pub cmdline: String,
    /// The device's counters.
    pub metrics: Arc<VsockMetrics>,
}

/// Creates the device around `bound` on window `index` (ioeventfd per queue, irqfd on
/// `VIRTIO_IRQ_BASE + index`).
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    index: u32,
    settings: &VsockSettings,
    bound: BoundVsock,
    launcher: devices::thread::ThreadLauncher,
) -> Result<AttachedVsock, VsockSetupError> {
    let mut config = VsockConfig::new(u64::from(settings.guest_cid), settings.uds_path.clone());
    config.launcher = launcher;
    let BoundVsock { listener, file } = bound;
    let vsock = Vsock::new(config, listener).map_err(|e| VsockSetupError::Device(e.to_string()))?;
    let metrics = vsock.metrics();
    let transport = MmioTransport::new(mem.clone(), Box::new(vsock))
        .map_err(|e| VsockSetupError::Device(e.to_string()))?;
    let names = crate::virtio_window::WiringNames {
        ioevent: "KVM_IOEVENTFD (virtio-vsock queue notify)",
        irqfd: "KVM_IRQFD (virtio-vsock)",
    };
    // The socket file is removed after the device (and its worker) are gone.
    let placed = crate::virtio_window::place(vm, transport, index, names, file)?;
    Ok(AttachedVsock {
        base: placed.base,
        device: placed.device,
        cmdline: placed.cmdline,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_defaults_and_errors_name_the_value() {
        let s: VsockSettings = "uds=/run/v.sock".parse().expect("uds only");
        assert_eq!(s.guest_cid, DEFAULT_GUEST_CID);
        assert_eq!(s.uds_path, PathBuf::from("/run/v.sock"));
        let s: VsockSettings = "cid=42,uds=v.sock".parse().expect("any order");
        assert_eq!(
            (s.guest_cid, s.uds_path.as_path()),
            (42, Path::new("v.sock"))
        );
        for (text, needle) in [
            ("cid=3", "uds=PATH is missing"),
            ("uds=", "uds=PATH is missing"),
            ("uds=/a,cid=2", "cid=2"),
            ("uds=/a,cid=x", "cid=x"),
            ("uds=/a,cid=4294967295", "cid=4294967295"),
            ("uds=/a,port=5", "unknown key \"port\""),
            ("uds=/a,uds=/b", "uds= given twice"),
            ("/a", "\"/a\" is not KEY=VALUE"),
        ] {
            let err = text.parse::<VsockSettings>().expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
        let long = format!("uds=/tmp/{}", "x".repeat(100));
        let err = long.parse::<VsockSettings>().expect_err("too long");
        assert!(err.contains("too long"), "{err}");
    }

    /// The vsock worker does everything it does (accept, CONNECT line, connect to
    /// `<uds>_<port>`, relay, shutdown, hang-up check) under the filter it gets in a VM.
    #[test]
    fn the_vsock_worker_runs_under_its_seccomp_filter() {
        use devices::testing::VsockHarness;
        use devices::vsock::packet::Op;
        use std::io::{Read, Write};
        use std::time::Duration;

        let filter = Arc::new(crate::sandbox::seccomp::compile_vsock_worker().expect("compile"));
        let launcher = devices::thread::ThreadLauncher::new(move |name, body| {
            let filter = filter.clone();
            std::thread::Builder::new().name(name).spawn(move || {
                crate::sandbox::seccomp::install(
                    crate::sandbox::seccomp::ThreadKind::Worker,
                    &filter,
                )
                .expect("install");
                body();
            })
        });
        let mut h = VsockHarness::new(|c| c.launcher = launcher).expect("harness");
        let t = Duration::from_secs(10);
        // Host-initiated, with data both ways and the client going away.
        let mut client = std::os::unix::net::UnixStream::connect(&h.uds_path).expect("connect");
        client.set_read_timeout(Some(t)).expect("timeout");
        client.write_all(b"CONNECT 52\nhi").expect("write");
        let req = h.recv(t).expect("REQUEST");
        let local = req.header.src_port;
        h.send(h.header(52, local, Op::Response), &[])
            .expect("RESPONSE");
        let mut ok = [0u8; 14];
        client.read_exact(&mut ok).expect("OK");
        assert_eq!(&ok, b"OK 1073741824\n");
        assert_eq!(h.recv(t).expect("RW").payload, b"hi");
        h.send(h.header(52, local, Op::Rw), b"yo").expect("RW");
        let mut yo = [0u8; 2];
        client.read_exact(&mut yo).expect("read");
        drop(client);
        let shut = h.recv_skip_credit(t).expect("SHUTDOWN");
        assert_eq!(shut.header.operation(), Some(Op::Shutdown));
        // Guest-initiated: a Unix socket created and connected by the filtered worker.
        let listener = UnixListener::bind(h.port_path(7)).expect("bind");
        h.send(h.header(9000, 7, Op::Request), &[])
            .expect("REQUEST");
        assert_eq!(
            h.recv(t).expect("RESPONSE").header.operation(),
            Some(Op::Response)
        );
        let (mut server, _) = listener.accept().expect("accept");
        h.send(h.header(9000, 7, Op::Rw), b"up").expect("RW");
        let mut up = [0u8; 2];
        server.read_exact(&mut up).expect("read");
        assert_eq!(&up, b"up");
        // The worker stops (reset) under its filter too.
        h.driver.write_reg(devices::virtio::mmio::regs::STATUS, 0);
        assert_eq!(VsockMetrics::get(&h.metrics.connections_open), 0);
    }

    #[test]
    fn the_socket_is_bound_refused_when_live_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("rf-vsock-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let settings = VsockSettings {
            guest_cid: 3,
            uds_path: dir.join("v.sock"),
        };
        let bound = bind(&settings).expect("bind");
        assert!(settings.uds_path.exists());
        let err = bind(&settings).expect_err("in use");
        assert!(err.to_string().contains("another process serves"), "{err}");
        drop(bound);
        assert!(!settings.uds_path.exists(), "removed when dropped");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
