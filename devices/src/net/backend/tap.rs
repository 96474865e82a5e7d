//! The `tap` backend: the guest's frames go to and from a Linux tap interface.
//!
//! The tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte vnet header
//! (TUNSETVNETHDRSZ), which is exactly the virtio-net VERSION_1 header. So a TX frame is one
//! `writev` over the guest's own buffers (header included; the device worker submits it
//! through its io_uring ring, see [`NetBackend::ring_tx_fd`]) and an RX frame is one `readv`
//! straight into the guest's RX buffers: no copy in this process. TUNSETOFFLOAD is set from
//! the features the guest accepted, so the kernel only sends checksum-offloaded or GSO frames
//! to a guest that can take them.
//!
//! Policy cannot be enforced on a tap beyond what the tap's namespace allows (design §1).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{BackendError, FdInterest, NetBackend, RxBuf, RxFrame, TxFrame};
use crate::net::features;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// `struct ifreq` restricted to the name and flags members we use.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Why a tap could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or contains NUL.
    #[error("invalid tap name {0:?}: use 1 to 15 bytes without NUL")]
    BadName(String),
    /// /dev/net/tun does not exist.
    #[error("cannot open /dev/net/tun for tap {name}: it does not exist; load the tun module (modprobe tun) or use --net user")]
    NoTunDevice {
        /// Interface name.
        name: String,
    },
    /// Not allowed to open /dev/net/tun or attach the interface.
    #[error("no permission to attach tap {name} ({op}): run with CAP_NET_ADMIN, or create the tap for your user first (ip tuntap add {name} mode tap user $USER vnet_hdr)")]
    Permission {
        /// Interface name.
        name: String,
        /// Step that failed.
        op: &'static str,
    },
    /// The interface is already attached by someone else.
    #[error("tap {name} is busy: another process has had it open for over a second; close it or pick another interface")]
    Busy {
        /// Interface name.
        name: String,
    },
    /// Any other OS error.
    #[error("tap {name}: {op} failed: {source}")]
    Io {
        /// Interface name.
        name: String,
        /// Step that failed.
        op: &'static str,
        /// OS error.
        source: io::Error,
    },
}

/// How long an attached (`EBUSY`) tap is retried before [`TapError::Busy`].
const BUSY_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// A tap interface used as the device's backend.
#[derive(Debug)]
pub struct TapBackend {
    fd: OwnedFd,
    ifname: String,
    label: String,
    /// Set when poll said readable, cleared on EAGAIN: avoids a failing `readv` per loop.
    readable: bool,
}

fn ioctl_err(name: &str, op: &'static str, err: io::Error) -> TapError {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission {
            name: name.to_owned(),
            op,
        },
        Some(libc::EBUSY) => TapError::Busy {
            name: name.to_owned(),
        },
        _ => TapError::Io {
            name: name.to_owned(),
            op,
            source: err,
        },
    }
}

impl TapBackend {
    /// Attaches to tap `name`, creating it (non-persistent) if it does not exist. The
    /// descriptor is non-blocking and close-on-exec.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let cname = CString::new(name).map_err(|_| TapError::BadName(name.to_owned()))?;
        let bytes = cname.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(TapError::BadName(name.to_owned()));
        }
        // SAFETY: the path is a NUL-terminated literal; the flags are valid for open(2).
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    TapError::NoTunDevice {
                        name: name.to_owned(),
                    }
                }
                _ => ioctl_err(name, "open /dev/net/tun", err),
            });
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // A process that just closed the tap may still hold it for a moment (the kernel drops
        // descriptors referenced by a dying process's io_uring after the process is gone), so
        // EBUSY is retried for a bounded time before it is reported.
        let busy_deadline = std::time::Instant::now() + BUSY_RETRY_FOR;
        loop {
            // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its layout (name,
            // then the flags member of the union, padded to the full 40 bytes) and lives
            // across the call.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) } >= 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() >= busy_deadline
            {
                return Err(ioctl_err(name, "TUNSETIFF", err));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let hdr_len: libc::c_int = super::super::header::VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which is valid.
        if unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        } < 0
        {
            return Err(ioctl_err(
                name,
                "TUNSETVNETHDRSZ",
                io::Error::last_os_error(),
            ));
        }
        let end = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(libc::IFNAMSIZ);
        let actual = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Ok(Self {
            fd,
            label: format!("tap:{actual}"),
            ifname: actual,
            readable: true,
        })
    }

    /// The interface name the kernel attached.
    pub fn if_name(&self) -> &str {
        &self.ifname
    }

    /// Sets the offloads the kernel may use on frames it sends to us (= to the guest).
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value as the ioctl argument.
        if unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        } < 0
        {
            return Err(ioctl_err(
                &self.ifname,
                "TUNSETOFFLOAD",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Offload flags matching what the guest accepted.
    pub fn offload_for(features_acked: u64) -> libc::c_uint {
        let has = |bit: u32| features_acked & (1u64 << bit) != 0;
        let mut flags = 0;
        if has(features::VIRTIO_NET_F_GUEST_CSUM) {
            flags |= TUN_F_CSUM;
            if has(features::VIRTIO_NET_F_GUEST_TSO4) {
                flags |= TUN_F_TSO4;
            }
            if has(features::VIRTIO_NET_F_GUEST_TSO6) {
                flags |= TUN_F_TSO6;
            }
        }
        flags
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> BackendError {
        BackendError::Io {
            backend: self.label.clone(),
            op,
            source,
        }
    }
}

impl NetBackend for TapBackend {
    fn name(&self) -> &str {
        &self.label
    }

    fn activate(&mut self, features: u64) -> Result<(), BackendError> {
        self.set_offload(Self::offload_for(features))
            .map_err(|e| BackendError::Config {
                backend: self.label.clone(),
                what: e.to_string(),
            })
    }

    fn send(&mut self, frame: &TxFrame<'_>) -> Result<(), BackendError> {
        let iov = frame.with_header;
        // SAFETY: `IoSlice` is ABI compatible with `iovec`; every slice is valid for reads
        // during this call; writev reads at most their total length.
        let n = unsafe {
            libc::writev(
                self.fd.as_raw_fd(),
                iov.as_ptr().cast(),
                iov.len() as libc::c_int,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Err(BackendError::WouldBlock);
            }
            return Err(self.io_err("writev", err));
        }
        Ok(())
    }

    fn ring_tx_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn recv(&mut self, buf: RxBuf<'_>) -> Result<Option<RxFrame>, BackendError> {
        if !self.readable {
            return Ok(None);
        }
        let iov = buf.with_header;
        // SAFETY: `IoSliceMut` is ABI compatible with `iovec`; every slice is valid for
        // writes during this call (guest RX buffers owned by the device until used).
        let n = unsafe {
            libc::readv(
                self.fd.as_raw_fd(),
                iov.as_ptr().cast(),
                iov.len() as libc::c_int,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                self.readable = false;
                return Ok(None);
            }
            return Err(self.io_err("readv", err));
        }
        Ok(Some(RxFrame::WithHeader { len: n as usize }))
    }

    fn interests(&mut self, rx_space: bool, out: &mut Vec<FdInterest>) {
        if rx_space && !self.readable {
            out.push(FdInterest {
                fd: self.fd.as_raw_fd(),
                token: 0,
                readable: true,
                writable: false,
            });
        }
    }

    fn on_fd_ready(&mut self, _token: u64, readable: bool, _writable: bool) {
        if readable {
            self.readable = true;
        }
    }
}
