//! Interrupts for the halting wait: the local APIC (its one-shot timer and end of
//! interrupt) and one IOAPIC pin routed to it, all programmed at CPL3 through the
//! identity map (the boot page tables map the low 4 GiB user-accessible, and the
//! in-kernel irqchip of KVM traps these pages wherever they are mapped).
//!
//! The probe keeps IF=0 everywhere but inside the idle gate's `sti; hlt`
//! (`idt::cpl0_idle`), so an interrupt can only end a halt: its IDT entry is a bare
//! `iretq`, and [`Apic::sleep`] writes the end-of-interrupt back at CPL3. That keeps
//! the CPL0 path, which this development host emulates, to a handful of
//! instructions per wake.
//!
//! Registers: Intel SDM vol. 3 §11.4–11.5 (local APIC) and the 82093AA datasheet
//! (IOAPIC). The addresses are the architectural defaults, which KVM, QEMU and
//! ringfence all keep.

use crate::port::outb;

/// Vector of the virtio device's interrupt.
pub const DEVICE_VECTOR: u8 = 0x20;
/// Vector of the local APIC timer (the wait's upper bound).
pub const TIMER_VECTOR: u8 = 0x21;
/// Spurious-interrupt vector (low four bits set, as older APICs require).
pub const SPURIOUS_VECTOR: u8 = 0x3f;
/// Every vector the probe programs; the IDT sends each to a bare `iretq`.
pub const VECTORS: [u8; 3] = [DEVICE_VECTOR, TIMER_VECTOR, SPURIOUS_VECTOR];

const LAPIC_BASE: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_VERSION: u64 = 0x30;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_LVT_LINT0: u64 = 0x350;
const LAPIC_LVT_LINT1: u64 = 0x360;
const LAPIC_LVT_ERROR: u64 = 0x370;
const LAPIC_TIMER_INITIAL: u64 = 0x380;
const LAPIC_TIMER_DIVIDE: u64 = 0x3e0;
/// SVR bit 8: the local APIC is software-enabled.
const SVR_ENABLE: u32 = 1 << 8;
/// LVT bit 16: the entry is masked.
const LVT_MASKED: u32 = 1 << 16;
/// Divide configuration 0b1011: the timer counts at the APIC bus clock.
const DIVIDE_BY_1: u32 = 0b1011;

const IOAPIC_BASE: u64 = 0xfec0_0000;
const IOAPIC_SELECT: u64 = 0x00;
const IOAPIC_WINDOW: u64 = 0x10;
const IOAPIC_REDIRECTION: u32 = 0x10;
/// Pins of the one IOAPIC ringfence (and KVM's in-kernel irqchip) provides.
pub const IOAPIC_PINS: u32 = 24;

/// 8259 PIC data ports: masked entirely, so no line reaches the CPU through them.
const PIC_MASTER_DATA: u16 = 0x21;
const PIC_SLAVE_DATA: u16 = 0xa1;

/// Why interrupts could not be set up (the net stack then keeps polling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    /// The transport named no interrupt line (no `:IRQ` in its `virtio_mmio.device=`).
    NoIrq,
    /// The line is not an IOAPIC pin.
    IrqOutOfRange(u32),
    /// Nothing answers at the local APIC's address.
    NoLocalApic,
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApicError::NoIrq => write!(f, "the virtio-mmio device names no IRQ"),
            ApicError::IrqOutOfRange(irq) => {
                write!(f, "IRQ {irq} is not one of the IOAPIC's {IOAPIC_PINS} pins")
            }
            ApicError::NoLocalApic => write!(f, "no local APIC at {LAPIC_BASE:#x}"),
        }
    }
}

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: the local APIC's register page is identity-mapped user-accessible
    // (boot page tables) and trapped by the hypervisor; a read has no effect on
    // probe memory.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: as for `lapic_read`; every register written here is one this module
    // owns (nothing else in the probe touches the APIC).
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

fn ioapic_write(reg: u32, value: u32) {
    // SAFETY: the IOAPIC's select/window pair is identity-mapped like the local
    // APIC; the probe is single-threaded, so select and write cannot interleave.
    unsafe {
        core::ptr::write_volatile((IOAPIC_BASE + IOAPIC_SELECT) as *mut u32, reg);
        core::ptr::write_volatile((IOAPIC_BASE + IOAPIC_WINDOW) as *mut u32, value);
    }
}

/// The local APIC, set up to wake the probe on one device line or a timer.
#[derive(Debug)]
pub struct Apic {
    irq: u32,
}

impl Apic {
    /// Enables the local APIC (LINT0/LINT1 and the 8259s masked, so only what this
    /// module programs can interrupt), arms its timer in one-shot mode on
    /// [`TIMER_VECTOR`], and routes IOAPIC pin `irq` to [`DEVICE_VECTOR`]
    /// (edge-triggered, active high, fixed delivery to this CPU). About a dozen
    /// register writes, each a trap: done once, when the first wait needs it.
    pub fn init(irq: Option<u32>) -> Result<Apic, ApicError> {
        let irq = irq.ok_or(ApicError::NoIrq)?;
        if irq >= IOAPIC_PINS {
            return Err(ApicError::IrqOutOfRange(irq));
        }
        let version = lapic_read(LAPIC_VERSION);
        if version == 0 || version == u32::MAX {
            return Err(ApicError::NoLocalApic);
        }
        outb(PIC_MASTER_DATA, 0xff);
        outb(PIC_SLAVE_DATA, 0xff);
        lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
        lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
        lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
        lapic_write(LAPIC_TPR, 0);
        lapic_write(LAPIC_SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
        lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_1);
        lapic_write(LAPIC_LVT_TIMER, u32::from(TIMER_VECTOR));
        let apic_id = lapic_read(LAPIC_ID) >> 24;
        ioapic_write(IOAPIC_REDIRECTION + 2 * irq + 1, apic_id << 24);
        ioapic_write(IOAPIC_REDIRECTION + 2 * irq, u32::from(DEVICE_VECTOR));
        Ok(Apic { irq })
    }

    /// The IOAPIC pin routed to [`DEVICE_VECTOR`].
    pub fn irq(&self) -> u32 {
        self.irq
    }

    /// Halts until the device interrupts or about `timeout_ns` pass (the timer
    /// counts at the APIC bus clock, which KVM runs at 1 GHz), then acknowledges
    /// the local APIC. An interrupt that came while IF was 0 ends the halt at once.
    /// The timer is left to run out: re-arming it on the next sleep restarts it,
    /// and a stale expiry only wakes one sleep early.
    pub fn sleep(&self, timeout_ns: u32) {
        lapic_write(LAPIC_TIMER_INITIAL, timeout_ns.max(1));
        #[cfg(not(test))]
        crate::idt::cpl0_idle();
        lapic_write(LAPIC_EOI, 0);
    }
}
