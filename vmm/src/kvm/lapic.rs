//! Local APIC programming: LINT0 as ExtINT (the PIC path) and LINT1 as NMI, as a BIOS leaves it.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::KvmError;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_MODE_EXTINT: u32 = 0x7;
const DELIVERY_MODE_NMI: u32 = 0x4;

fn read_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn write_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Routes LINT0 to ExtINT and LINT1 to NMI on `vcpu`'s local APIC.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let mut state = vcpu.get_lapic().map_err(KvmError::ioctl("KVM_GET_LAPIC"))?;
    let lvt0 = read_reg(&state, APIC_LVT0);
    write_reg(
        &mut state,
        APIC_LVT0,
        with_delivery_mode(lvt0, DELIVERY_MODE_EXTINT),
    );
    let lvt1 = read_reg(&state, APIC_LVT1);
    write_reg(
        &mut state,
        APIC_LVT1,
        with_delivery_mode(lvt1, DELIVERY_MODE_NMI),
    );
    vcpu.set_lapic(&state)
        .map_err(KvmError::ioctl("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_only_its_bits() {
        assert_eq!(
            with_delivery_mode(0x0001_0700, DELIVERY_MODE_NMI),
            0x0001_0400
        );
        let mut s = kvm_lapic_state::default();
        write_reg(&mut s, APIC_LVT1, 0x1234_5678);
        assert_eq!(read_reg(&s, APIC_LVT1), 0x1234_5678);
    }
}
