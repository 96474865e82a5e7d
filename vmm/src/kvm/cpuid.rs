//! Per-vCPU CPUID: the host's KVM-supported list with this vCPU's topology patched in.

use super::{KvmError, KvmHost};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};

/// Leaf 1 ECX bit telling the guest it runs under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit for hyper-threading / multi-core topology being valid.
const EDX_HTT: u32 = 1 << 28;

/// Builds the CPUID table for vCPU `index` of `count`.
pub fn for_vcpu(host: &KvmHost, index: u8, count: u8) -> Result<CpuId, KvmError> {
    let mut cpuid = host
        .kvm()
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    patch_topology(&mut cpuid, index, count);
    Ok(cpuid)
}

/// Bits of the APIC id that number the cores of one package (ceil(log2(count))).
fn apic_id_shift(count: u8) -> u32 {
    match count {
        0 | 1 => 0,
        n => u32::BITS - u32::from(n - 1).leading_zeros(),
    }
}

/// Writes the APIC id and logical CPU count into the leaves that carry them.
fn patch_topology(cpuid: &mut CpuId, index: u8, count: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(index) << 24)
                    | (u32::from(count.max(1)) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            // Extended topology: one thread per core, `count` cores per package.
            0xb | 0x1f => {
                entry.edx = u32::from(index);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 0x100;
                    }
                    1 => {
                        entry.eax = apic_id_shift(count);
                        entry.ebx = u32::from(count.max(1));
                        entry.ecx = 0x201;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn leaf_one_carries_apic_id_and_count() {
        let entries = [kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xdead_0800,
            ..Default::default()
        }];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        patch_topology(&mut cpuid, 1, 2);
        let e = cpuid.as_slice()[0];
        assert_eq!(e.ebx >> 24, 1);
        assert_eq!((e.ebx >> 16) & 0xff, 2);
        assert_eq!(e.ebx & 0xffff, 0x0800);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
    }

    #[test]
    fn apic_shift_covers_the_core_count() {
        assert_eq!(apic_id_shift(1), 0);
        assert_eq!(apic_id_shift(2), 1);
        assert_eq!(apic_id_shift(3), 2);
        assert_eq!(apic_id_shift(4), 2);
        assert_eq!(apic_id_shift(5), 3);
    }
}
