//! The nested harness: Linux guests under ringfence on hosts whose own `/dev/kvm` cannot run a
//! guest kernel (design §3 item 2a).
//!
//! An *outer* VM boots under QEMU's software CPU (`-accel tcg`) with emulated AMD SVM, loads
//! `kvm_amd` and so has a working `/dev/kvm`; ringfence runs inside it and boots the project's
//! Linux image. The pieces:
//!
//! - [`scenario`]: what a scenario is (an outer-VM shell script, guest files, a time limit) and
//!   what it reports (exit status, stdout, stderr, time), as one JSON line each;
//! - [`runner`]: `rf-nested run`, the outer VM's scenario runner: it starts [`services`], runs
//!   each scenario with a deadline and writes its result line to the second serial port;
//! - [`services`]: the servers a guest talks to (DNS, HTTP, a hashing sink, a pattern source,
//!   a UDP echo, a TLS server in [`tls_service`]), all inside the outer VM, on its loopback or on TEST-NET addresses of a dummy
//!   interface: the outer VM has no network device, so no packet can leave it;
//! - [`outer`]: the host side: boots the outer VM with the kit `cargo xtask nested` built,
//!   shows progress, enforces the suite's time budget, keeps both consoles' logs;
//! - [`fleet`]: Kata Containers' Firecracker call sequence replayed against `ringfence`
//!   (drives, vsock, the API);
//! - [`direct`]: the same scenarios on a host whose KVM runs guest kernels at full speed, in
//!   network and mount namespaces of their own instead of an outer VM.
//!
//! Everything runs at emulation speed: use it for correctness and for ratios between systems
//! measured in the same outer VM, never for absolute figures.

pub mod bypass_scripts;
pub mod direct;
pub mod fleet;
pub mod fleet_scripts;
pub mod guest_ram;
pub mod outer;
pub mod runner;
pub mod scenario;
pub mod services;
pub mod tls_scripts;
pub mod tls_service;
