//! Virtio over MMIO (modern, version 2 only): finding transports and the
//! split virtqueue.
//!
//! Owns the driver side of the virtio-mmio register block and of split
//! queues; knows nothing about networking. Device memory is identity-mapped,
//! so guest-virtual addresses are the guest-physical addresses handed to the
//! device.

pub mod mmio;
pub mod queue;

use alloc::vec::Vec;

use crate::cmdline::{parse_size, parse_u64, Cmdline};

/// Where QEMU microvm places its virtio-mmio transports.
const MICROVM_BASE: u64 = 0xfeb0_0000;
/// Spacing of QEMU microvm transports.
const MICROVM_STRIDE: u64 = 0x200;
/// How many microvm transport slots are scanned.
const MICROVM_SLOTS: u64 = 32;

/// A virtio-mmio transport location.
#[derive(Clone, Copy, Debug)]
pub struct MmioWindow {
    /// Guest-physical base address of the register block.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// The interrupt line, when the command line names it (`:IRQ`).
    pub irq: Option<u32>,
}

/// Parses one `virtio_mmio.device=SIZE@BASE:IRQ[:ID]` value (Linux syntax).
pub fn parse_device_token(value: &str) -> Option<MmioWindow> {
    let (size, rest) = value.split_once('@')?;
    let mut fields = rest.split(':');
    let base = fields.next()?;
    let irq = match fields.next() {
        Some(irq) => Some(u32::try_from(parse_u64(irq)?).ok()?),
        None => None,
    };
    Some(MmioWindow {
        base: parse_u64(base)?,
        size: parse_size(size)?,
        irq,
    })
}

/// Candidate transports: every `virtio_mmio.device=` token on the command
/// line, or, if there is none, QEMU microvm's transport window.
pub fn candidate_windows(cmdline: &Cmdline<'_>) -> Vec<MmioWindow> {
    let listed: Vec<MmioWindow> = cmdline
        .all("virtio_mmio.device")
        .filter_map(parse_device_token)
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    (0..MICROVM_SLOTS)
        .map(|i| MmioWindow {
            base: MICROVM_BASE + i * MICROVM_STRIDE,
            size: MICROVM_STRIDE,
            irq: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tokens_use_linux_syntax() {
        let w = parse_device_token("4K@0xd0000000:5").unwrap();
        assert_eq!((w.base, w.size, w.irq), (0xd000_0000, 4096, Some(5)));
        let w = parse_device_token("512@0xfeb02e00:12:3").unwrap();
        assert_eq!((w.base, w.size, w.irq), (0xfeb0_2e00, 512, Some(12)));
        let w = parse_device_token("4K@0xd0000000").unwrap();
        assert_eq!((w.base, w.irq), (0xd000_0000, None));
        assert!(parse_device_token("4K@0xd0000000:x").is_none());
        assert!(parse_device_token("0xd0000000:5").is_none());
        assert!(parse_device_token("4K@zz:5").is_none());
    }

    #[test]
    fn command_line_windows_replace_the_microvm_scan() {
        let c =
            Cmdline::new("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6");
        let w = candidate_windows(&c);
        assert_eq!(
            w.iter().map(|w| w.base).collect::<Vec<_>>(),
            [0xd000_0000, 0xd000_1000]
        );
        let w = candidate_windows(&Cmdline::new(""));
        assert_eq!(w.len(), MICROVM_SLOTS as usize);
        assert_eq!(w[1].base, MICROVM_BASE + MICROVM_STRIDE);
    }
}
