//! ringfence's guest agent: PID 1 of a Linux guest's initramfs.
//!
//! It mounts /proc, /sys, /dev (devtmpfs), /tmp and /run; brings up loopback and eth0 (DHCP
//! through busybox `udhcpc`, or a static address from `ringfence.ip`/`ringfence.gw`); runs the
//! command given on the kernel command line with the serial console as its stdin/stdout/stderr;
//! serves requests on vsock port 1024 when the guest has a vsock device; reaps orphans; and
//! reports the command's status to the VMM through port 0xf4, powering off
//! as a fallback.
//!
//! - [`protocol`]: the command-line encoding (dependency-free; the VMM uses it to build
//!   `ringfence.cmd=`);
//! - [`cmdline`]: parsing `/proc/cmdline` into an [`cmdline::AgentConfig`];
//! - [`netplan`]: the network setup steps;
//! - [`reaper`]: exit statuses of the agent's own children that PID 1's loop collected;
//! - [`status`]: how an exit or a signal becomes the reported status;
//! - [`runtime`]: the PID-1-only side effects;
//! - [`vsock_service`]: the control channel an orchestrator reaches over virtio-vsock.

pub mod cmdline;
pub mod host_files;
pub mod netplan;
pub mod protocol;
pub mod reaper;
pub mod runtime;
pub mod status;
pub mod vsock_service;
