//! The TSC clock: `rdtsc` plus the TSC frequency, taken from (in order) the
//! `probe.tsc_khz=` command-line key, CPUID leaf 0x40000010 (hypervisor TSC
//! frequency), CPUID 0x15 (crystal ratio), CPUID 0x16 (base MHz), or a ~10 ms
//! calibration against PIT channel 2.

use core::arch::x86_64::{__cpuid, _rdtsc};

use crate::port::{inb, outb};

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is allowed at CPL3 (CR4.TSD is clear) and has no side effects.
    unsafe { _rdtsc() }
}

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// `probe.tsc_khz=` on the command line.
    Cmdline,
    /// CPUID 0x40000010.
    Hypervisor,
    /// CPUID 0x15.
    Crystal,
    /// CPUID 0x16.
    BaseMhz,
    /// PIT channel 2 calibration.
    Pit,
    /// Nothing worked; times in ns are reported as 0.
    Unknown,
}

impl TscSource {
    /// Name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            TscSource::Cmdline => "cmdline",
            TscSource::Hypervisor => "cpuid-40000010",
            TscSource::Crystal => "cpuid-15",
            TscSource::BaseMhz => "cpuid-16",
            TscSource::Pit => "pit",
            TscSource::Unknown => "unknown",
        }
    }
}

/// A calibrated TSC.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// TSC ticks per millisecond (0 if unknown).
    pub tsc_khz: u64,
    /// Where `tsc_khz` came from.
    pub source: TscSource,
}

fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = __cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Plausible TSC frequencies: 100 MHz .. 20 GHz.
fn plausible(khz: u64) -> bool {
    (100_000..=20_000_000).contains(&khz)
}

impl Clock {
    /// Determines the TSC frequency; `cmdline_khz` wins when given.
    pub fn calibrate(cmdline_khz: Option<u64>) -> Clock {
        if let Some(khz) = cmdline_khz.filter(|&k| k > 0) {
            return Clock {
                tsc_khz: khz,
                source: TscSource::Cmdline,
            };
        }
        let (hv_max, ..) = cpuid(0x4000_0000);
        if (0x4000_0010..0x4000_0100).contains(&hv_max) {
            let (khz, ..) = cpuid(0x4000_0010);
            if plausible(u64::from(khz)) {
                return Clock {
                    tsc_khz: u64::from(khz),
                    source: TscSource::Hypervisor,
                };
            }
        }
        let (max_leaf, ..) = cpuid(0);
        if max_leaf >= 0x15 {
            let (den, num, crystal_hz, _) = cpuid(0x15);
            if den != 0 && num != 0 && crystal_hz != 0 {
                let khz = u64::from(crystal_hz) * u64::from(num) / u64::from(den) / 1000;
                if plausible(khz) {
                    return Clock {
                        tsc_khz: khz,
                        source: TscSource::Crystal,
                    };
                }
            }
        }
        if max_leaf >= 0x16 {
            let (mhz, ..) = cpuid(0x16);
            let khz = u64::from(mhz & 0xffff) * 1000;
            if plausible(khz) {
                return Clock {
                    tsc_khz: khz,
                    source: TscSource::BaseMhz,
                };
            }
        }
        match pit_calibrate() {
            Some(khz) => Clock {
                tsc_khz: khz,
                source: TscSource::Pit,
            },
            None => Clock {
                tsc_khz: 0,
                source: TscSource::Unknown,
            },
        }
    }

    /// Converts TSC ticks to nanoseconds (0 if the frequency is unknown).
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        if self.tsc_khz == 0 {
            return 0;
        }
        (u128::from(ticks) * 1_000_000 / u128::from(self.tsc_khz)) as u64
    }

    /// Converts nanoseconds to TSC ticks (a huge value if the frequency is
    /// unknown, so deadlines derived from it are effectively bounded by the
    /// caller's iteration limits).
    pub fn ns_to_ticks(&self, ns: u64) -> u64 {
        let khz = if self.tsc_khz == 0 {
            3_000_000
        } else {
            self.tsc_khz
        };
        (u128::from(ns) * u128::from(khz) / 1_000_000).min(u128::from(u64::MAX)) as u64
    }

    /// A deadline `ms` milliseconds from now, in TSC ticks.
    pub fn deadline_ms(&self, ms: u64) -> u64 {
        rdtsc().saturating_add(self.ns_to_ticks(ms.saturating_mul(1_000_000)))
    }
}

/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 11932 PIT ticks ≈ 10 ms.
const PIT_WINDOW: u64 = 11_932;
/// Upper bound on counter reads (each costs three VM exits).
const PIT_MAX_POLLS: u32 = 50_000;

/// Latches and reads the current count of PIT channel 0.
fn pit_read_counter0() -> u16 {
    outb(0x43, 0x00); // counter latch, channel 0
    let lo = inb(0x40);
    let hi = inb(0x40);
    u16::from_le_bytes([lo, hi])
}

/// Measures TSC ticks while PIT channel 0 counts down ~10 ms.
///
/// Channel 0 is used because its gate is always on (channel 2's gate lives
/// behind port 0x61, which QEMU microvm does not implement). It is set to a
/// one-shot countdown from 0xffff; interrupts are off, so its IRQ is ignored.
fn pit_calibrate() -> Option<u64> {
    outb(0x43, 0x30); // channel 0, lobyte/hibyte, mode 0, binary
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let first = pit_read_counter0();
    let start = rdtsc();
    let mut polls = 0;
    loop {
        let now = pit_read_counter0();
        let elapsed = u64::from(first.wrapping_sub(now));
        // A counter that never moves (0xffff from an absent device) or moves
        // backwards past the window is not a PIT we can use.
        if (PIT_WINDOW..0x8000).contains(&elapsed) {
            let ticks = rdtsc() - start;
            let khz = ticks * PIT_HZ / elapsed / 1000;
            return plausible(khz).then_some(khz);
        }
        polls += 1;
        if polls >= PIT_MAX_POLLS {
            return None;
        }
    }
}
