//! The hypervisor boundary: every raw KVM call of the VMM lives below this module.
//!
//! The rest of the VMM talks to [`KvmHost`] (the opened `/dev/kvm` and what it supports) and to
//! the per-vCPU setup helpers ([`cpuid`], [`regs`], [`msrs`], [`lapic`]); it never issues ioctls
//! of its own.

pub mod cpuid;
pub mod lapic;
pub mod msrs;
pub mod regs;
pub mod speed;

use kvm_ioctls::{Cap, Kvm};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::io::{FromRawFd, IntoRawFd};

/// The path of the KVM device node.
pub const KVM_PATH: &str = "/dev/kvm";

/// Capabilities the VMM cannot run without, with the reason each is needed.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "in-kernel interrupt controller"),
    (Cap::Ioeventfd, "virtqueue kicks without a userspace exit"),
    (Cap::Irqfd, "device interrupts from the device threads"),
    (Cap::UserMemory, "guest memory regions"),
    (Cap::SetTssAddr, "x86 TSS placement"),
    (Cap::ExtCpuid, "CPUID setup"),
    (Cap::ImmediateExit, "clean vCPU stop on signals"),
    (
        Cap::Pit2,
        "in-kernel timer for guests that calibrate against the PIT",
    ),
];

/// Errors opening or probing KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` is missing.
    #[error("{KVM_PATH} does not exist: this host has no KVM (enable virtualization in the BIOS or the hypervisor, and load kvm_intel or kvm_amd)")]
    NoDevice,
    /// `/dev/kvm` exists but the user may not open it.
    #[error("no permission to open {KVM_PATH}: add your user to the 'kvm' group (sudo usermod -aG kvm $USER, then log in again) or run as root")]
    NoPermission,
    /// Any other error opening `/dev/kvm`.
    #[error("cannot open {KVM_PATH}: {0}")]
    Open(#[source] io::Error),
    /// The KVM API version is not the stable one.
    #[error("KVM API version is {0}, ringfence needs 12")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("KVM lacks capability {cap:?} (needed for {why})")]
    MissingCap {
        /// The capability.
        cap: Cap,
        /// What the VMM uses it for.
        why: &'static str,
    },
    /// A boot structure did not fit in guest memory.
    #[error("cannot write {0} into guest memory (is --mem large enough?)")]
    GuestWrite(&'static str),
    /// An ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// What the VMM was doing.
        what: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl KvmError {
    /// Wraps a failed KVM ioctl with what the VMM was doing.
    pub fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| KvmError::Ioctl { what, source }
    }
}

/// The opened `/dev/kvm` with the facts the VMM needs about it.
pub struct KvmHost {
    kvm: Kvm,
}

impl KvmHost {
    /// Opens `/dev/kvm`, mapping the common failures to errors that say what to do.
    pub fn open() -> Result<Self, KvmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(KVM_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => KvmError::NoDevice,
                io::ErrorKind::PermissionDenied => KvmError::NoPermission,
                _ => KvmError::Open(e),
            })?;
        // SAFETY: `file` is an open /dev/kvm descriptor whose ownership we hand to `Kvm`.
        let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        Ok(KvmHost { kvm })
    }

    /// Fails with the first required capability the host lacks.
    pub fn check_required_caps(&self) -> Result<(), KvmError> {
        for &(cap, why) in REQUIRED_CAPS {
            if !self.kvm.check_extension(cap) {
                return Err(KvmError::MissingCap { cap, why });
            }
        }
        Ok(())
    }

    /// Whether the host supports `cap`.
    pub fn has_cap(&self, cap: Cap) -> bool {
        self.kvm.check_extension(cap)
    }

    /// Creates a VM. `KVM_CREATE_VM` can fail with `EINTR` when a signal arrives while the
    /// kernel sets the VM up (seen on nested hosts, where that takes long); that is retried,
    /// a bounded number of times, and never ends a run.
    pub fn create_vm(&self) -> Result<kvm_ioctls::VmFd, KvmError> {
        const ATTEMPTS: u32 = 100;
        let mut tries = 0;
        loop {
            match self.kvm.create_vm() {
                Err(e) if e.errno() == libc::EINTR && tries + 1 < ATTEMPTS => tries += 1,
                other => return other.map_err(KvmError::ioctl("KVM_CREATE_VM")),
            }
        }
    }

    /// The most vCPUs a VM may have on this host (`KVM_CAP_MAX_VCPUS`). More vCPUs than host
    /// CPUs (KVM's "recommended" count) is allowed, as in other VMMs: they share the CPUs.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The KVM API version.
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// The underlying handle, for the VM builder.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }
}
