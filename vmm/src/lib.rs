//! ringfence: a minimal KVM microVM monitor for sandboxes.
//!
//! The library builds and runs a VM from a typed [`config::VmConfig`]; the `ringfence` binary
//! is a thin CLI over it. Raw KVM calls live in [`kvm`]; boot protocols in [`boot`]; port I/O
//! devices (serial, exit port, i8042) in [`io`]; the vCPU run loop in [`vcpu`]; building a VM in
//! [`vm`]; a started VM (wait, kill, tear down) in [`handle`]; its network handles for the
//! embedding program (dial into the guest, serve the guest, capture) in [`embed`]; many VMs
//! sharing device threads and address pools in [`host`]; seccomp
//! filters and privilege dropping in [`sandbox`].

pub mod api;
pub mod block;
pub mod boot;
pub mod config;
pub mod doctor;
pub mod embed;
pub mod exit;
pub mod handle;
pub mod host;
pub mod io;
pub mod kvm;
pub mod layout;
pub mod linux_image;
pub mod net;
pub mod net_control;
pub mod net_policy;
pub mod net_user;
pub mod probe_image;
pub mod sandbox;
pub mod signals;
pub mod tls_intercept;
pub mod unix_socket;
pub mod vcpu;
pub mod virtio_window;
pub mod vm;
pub mod vsock;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_entry;

pub use config::{Console, VmConfig};
pub use exit::VmExit;
pub use handle::VmHandle;
pub use host::{Host, HostConfig};
pub use vm::{NetControl, Vm, VmError};
