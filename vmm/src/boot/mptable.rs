//! The Intel MultiProcessor table (MP spec 1.4) that tells a guest without ACPI how many CPUs
//! it has and how legacy IRQs reach the IOAPIC.
//!
//! Layout, written at [`EBDA_START`] (the last KiB of base memory, which Linux scans for the
//! floating pointer): the 16-byte floating pointer structure ("_MP_"), then the configuration
//! table ("PCMP") with, in the order the spec asks for: one processor entry per vCPU (LAPIC id
//! = vCPU index, the first is the bootstrap processor), one ISA bus, one IOAPIC (id = number
//! of vCPUs, at 0xfec00000), an I/O interrupt entry per IOAPIC pin 0-23 (IRQ n to pin n,
//! matching KVM's in-kernel IOAPIC routing; pins above 15 carry virtio-mmio devices), and the two local interrupt entries (ExtINT on
//! LINT0, NMI on LINT1, to every local APIC). Both structures carry checksums that make
//! their bytes sum to zero. The region up to 1 MiB is reserved in the memory map.
//!
//! This module only writes guest memory; it never reads it back.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{EBDA_START, HIMEM_START};

/// Local APIC base address every processor uses.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// IOAPIC base address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// IRQs routed through the IOAPIC: all of KVM's in-kernel IOAPIC pins.
const IOAPIC_PINS: u8 = 24;
/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;
/// Local APIC version reported per processor (integrated APIC).
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version (82093AA-compatible).
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature: family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX feature bits reported per processor: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Processor entry flags.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// Interrupt types.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Bus id of the single ISA bus.
const ISA_BUS_ID: u8 = 0;
/// Destination "all local APICs" in local interrupt entries.
const ALL_LAPICS: u8 = 0xff;
/// Size of the floating pointer structure and of the table header.
const MPF_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
/// Largest vCPU count: LAPIC ids 0..n-1 plus the IOAPIC id n must stay below 0xff (broadcast).
pub const MAX_VCPUS: u8 = 254;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// The vCPU count is 0 or too large for 8-bit APIC ids.
    #[error("cannot describe {0} vCPUs in an MP table; use 1 to {MAX_VCPUS}")]
    VcpuCount(u8),
    /// The table does not fit between the EBDA and 1 MiB.
    #[error("the MP table for {vcpus} vCPUs needs {size} bytes, more than the {room} bytes reserved below 1 MiB")]
    TooLarge {
        /// vCPUs asked for.
        vcpus: u8,
        /// Bytes needed.
        size: usize,
        /// Bytes available.
        room: usize,
    },
    /// Guest memory does not cover the table's address.
    #[error(
        "cannot write the MP table at {addr:#x}: {reason}; give the guest at least 1 MiB of memory"
    )]
    GuestWrite {
        /// Guest-physical address of the table.
        addr: u64,
        /// vm-memory's explanation.
        reason: String,
    },
}

/// Makes the bytes of `buf` sum to zero by setting `buf[at]`.
fn fix_checksum(buf: &mut [u8], at: usize) {
    buf[at] = 0;
    let sum = buf.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    buf[at] = sum.wrapping_neg();
}

/// The whole structure (floating pointer + configuration table) for `vcpus` processors, as
/// it must appear at guest-physical `base`.
pub fn build(vcpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::VcpuCount(vcpus));
    }
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // Flags 0: polarity and trigger mode conform to the ISA bus (active high, edge).
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_VECTORED, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, irq]);
        count += 1;
    }
    for (kind, lint) in [(INT_EXTINT, 0u8), (INT_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LAPICS, lint]);
        count += 1;
    }

    let table_len = HEADER_SIZE + entries.len();
    let size = MPF_SIZE + table_len;
    let room = (HIMEM_START - EBDA_START) as usize;
    if size > room {
        return Err(MptableError::TooLarge { vcpus, size, room });
    }
    let table_addr =
        u32::try_from(base + MPF_SIZE as u64).map_err(|_| MptableError::GuestWrite {
            addr: base,
            reason: "the table must sit below 4 GiB".into(),
        })?;

    let mut mpf = [0u8; MPF_SIZE];
    mpf[0..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = SPEC_REV;
    // Feature bytes 1-5 stay 0: a configuration table is present, no IMCR.
    fix_checksum(&mut mpf, 10);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, fixed below
    table.extend_from_slice(b"RINGFNCE"); // OEM id (8 bytes)
    table.extend_from_slice(b"MICROVM     "); // product id (12 bytes)
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    debug_assert_eq!(table.len(), HEADER_SIZE);
    table.extend_from_slice(&entries);
    fix_checksum(&mut table, 7);

    let mut out = mpf.to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `vcpus` processors at [`EBDA_START`].
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|e| MptableError::GuestWrite {
            addr: EBDA_START,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// What a guest learns from the table.
    struct Parsed {
        /// (LAPIC id, flags) per processor entry.
        cpus: Vec<(u8, u8)>,
        ioapic: u8,
        /// (source IRQ, IOAPIC pin) per I/O interrupt entry.
        io_ints: Vec<(u8, u8)>,
        /// (interrupt type, LINT pin) per local interrupt entry.
        local_ints: Vec<(u8, u8)>,
        count: u16,
    }

    /// Parses the table the way a guest does: find "_MP_", follow the pointer, walk entries.
    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let mpf = read(mem, EBDA_START, 16);
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(sum(&mpf), 0, "floating pointer checksum");
        assert_eq!((mpf[8], mpf[9]), (1, 4));
        let table_addr = u64::from(u32::from_le_bytes(mpf[4..8].try_into().unwrap()));
        let header = read(mem, table_addr, HEADER_SIZE);
        assert_eq!(&header[..4], b"PCMP");
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        let table = read(mem, table_addr, len);
        assert_eq!(sum(&table), 0, "configuration table checksum");
        assert!(table_addr + len as u64 <= HIMEM_START);
        assert_eq!(
            u32::from_le_bytes(header[36..40].try_into().unwrap()),
            LAPIC_ADDR
        );
        let count = u16::from_le_bytes([header[34], header[35]]);
        let (mut cpus, mut ioapic, mut io_ints, mut local_ints) = (vec![], 0xff, vec![], vec![]);
        let mut at = HEADER_SIZE;
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => {
                    cpus.push((table[at + 1], table[at + 3]));
                    at += 20;
                }
                ENTRY_BUS => {
                    assert_eq!(&table[at + 2..at + 8], b"ISA   ");
                    at += 8;
                }
                ENTRY_IOAPIC => {
                    ioapic = table[at + 1];
                    assert_eq!(table[at + 3] & 1, 1, "IOAPIC enabled");
                    let addr = u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap());
                    assert_eq!(addr, IOAPIC_ADDR);
                    at += 8;
                }
                ENTRY_IO_INTERRUPT => {
                    assert_eq!(table[at + 6], ioapic);
                    io_ints.push((table[at + 5], table[at + 7]));
                    at += 8;
                }
                ENTRY_LOCAL_INTERRUPT => {
                    local_ints.push((table[at + 1], table[at + 7]));
                    at += 8;
                }
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(at, len, "entries fill the declared length exactly");
        Parsed {
            cpus,
            ioapic,
            io_ints,
            local_ints,
            count,
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_the_first_is_the_bsp() {
        for vcpus in [1u8, 2, 4, 32] {
            let mem = guest(2);
            write(&mem, vcpus).unwrap();
            let Parsed {
                cpus,
                ioapic,
                io_ints,
                local_ints,
                count,
            } = parse(&mem);
            assert_eq!(cpus.len(), vcpus as usize);
            for (i, (id, flags)) in cpus.iter().enumerate() {
                assert_eq!(*id as usize, i);
                let want = if i == 0 { 3 } else { 1 };
                assert_eq!(*flags, want, "cpu {i} flags");
            }
            assert_eq!(ioapic, vcpus);
            assert_eq!(io_ints, (0..24).map(|i| (i, i)).collect::<Vec<_>>());
            assert_eq!(local_ints, vec![(INT_EXTINT, 0), (INT_NMI, 1)]);
            assert_eq!(count as usize, vcpus as usize + 2 + 24 + 2);
        }
    }

    #[test]
    fn the_largest_table_fits_below_1_mib() {
        let mem = guest(2);
        write(&mem, MAX_VCPUS).unwrap();
        assert_eq!(parse(&mem).cpus.len(), MAX_VCPUS as usize);
    }

    #[test]
    fn invalid_counts_and_missing_memory_are_errors() {
        let mem = guest(2);
        assert_eq!(write(&mem, 0), Err(MptableError::VcpuCount(0)));
        assert_eq!(write(&mem, 255), Err(MptableError::VcpuCount(255)));
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = write(&tiny, 1).unwrap_err();
        assert!(matches!(err, MptableError::GuestWrite { .. }), "{err}");
        assert!(err.to_string().contains("0x9fc00"), "{err}");
    }
}
