//! Boot MSRs: the values a freshly reset CPU (as a BIOS leaves it) would have for a Linux entry.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use super::KvmError;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSR list written to every vCPU before boot.
pub fn boot_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Writes [`boot_entries`] to `vcpu`, failing if KVM accepted fewer than all of them.
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let entries = boot_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| {
        KvmError::ioctl("building the boot MSR list")(kvm_ioctls::Error::new(libc::E2BIG))
    })?;
    let written = vcpu
        .set_msrs(&msrs)
        .map_err(KvmError::ioctl("KVM_SET_MSRS"))?;
    if written != entries.len() {
        return Err(KvmError::Ioctl {
            what: "KVM_SET_MSRS (not every boot MSR was accepted)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    Ok(())
}
