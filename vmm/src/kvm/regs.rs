//! Entry CPU state for the two boot protocols: PVH (32-bit flat protected mode, paging off) and
//! the Linux 64-bit boot protocol (long mode, identity-mapped first GiB).
//!
//! Both write a GDT into guest memory so that the cached segment state we load matches a table
//! the guest can reload.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::KvmError;
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the vCPU enters the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode at `entry`, `ebx` = start_info.
    Pvh {
        /// 32-bit entry point from the ELF note.
        entry: u64,
    },
    /// Linux 64-bit boot protocol at `entry`, `rsi` = boot_params.
    Linux64 {
        /// 64-bit entry point (load address + 0x200).
        entry: u64,
    },
}

/// A GDT entry from flags, base and limit in the packed x86 layout.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a GDT entry into the segment-cache form KVM takes.
fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// GDT for PVH: null, 32-bit flat code (0x08), 32-bit flat data (0x10), TSS (0x18).
const PVH_GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// GDT for the Linux 64-bit protocol: __BOOT_CS = 0x10 (64-bit code), __BOOT_DS = 0x18, TSS 0x20.
const LINUX_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn write_gdt(mem: &GuestMemoryMmap, table: &[u64]) -> Result<(), KvmError> {
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(|_| KvmError::GuestWrite("the boot GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| KvmError::GuestWrite("the boot IDT"))
}

/// Identity-maps the first GiB with 2 MiB pages for the Linux 64-bit entry (user-accessible,
/// so the same tables serve the CPL3 speed probe; Linux replaces them at once).
pub(crate) fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), KvmError> {
    let err = |_| KvmError::GuestWrite("the boot page tables");
    mem.write_obj(PDPTE_START | 0x07, GuestAddress(PML4_START))
        .map_err(err)?;
    mem.write_obj(PDE_START | 0x07, GuestAddress(PDPTE_START))
        .map_err(err)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x87, GuestAddress(PDE_START + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

fn apply_gdt(sregs: &mut kvm_sregs, table: &[u64], code: u8, data: u8, tss: u8) {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data_seg = segment_from_gdt(table[data as usize], data);
    sregs.cs = segment_from_gdt(table[code as usize], code);
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = segment_from_gdt(table[tss as usize], tss);
}

/// Puts `vcpu` in the entry state `mode` asks for (BSP only; APs wait for INIT/SIPI).
pub fn set_entry_state(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    mode: EntryMode,
) -> Result<(), KvmError> {
    let mut sregs = vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh { entry } => {
            write_gdt(mem, &PVH_GDT)?;
            apply_gdt(&mut sregs, &PVH_GDT, 1, 2, 3);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = PVH_INFO_START;
        }
        EntryMode::Linux64 { entry } => {
            write_gdt(mem, &LINUX_GDT)?;
            write_page_tables(mem)?;
            apply_gdt(&mut sregs, &LINUX_GDT, 2, 3, 4);
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs)
        .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(KvmError::ioctl("KVM_SET_FPU"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_decodes() {
        let s = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 2);
        assert_eq!(s.selector, 0x10);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.l, 1);
        assert_eq!(s.g, 1);
        assert_eq!(s.present, 1);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
    }

    #[test]
    fn pvh_segments_are_32_bit_flat() {
        let cs = segment_from_gdt(PVH_GDT[1], 1);
        assert_eq!((cs.db, cs.l, cs.type_), (1, 0, 0xb));
        let tss = segment_from_gdt(PVH_GDT[3], 3);
        assert_eq!((tss.type_, tss.limit, tss.g), (0xb, 0x67, 0));
    }
}
