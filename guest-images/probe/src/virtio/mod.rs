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
}

/// Parses one `virtio_mmio.device=SIZE@BASE:IRQ[:ID]` value (Linux syntax).
pub fn parse_device_token(value: &str) -> Option<MmioWindow> {
    let (size, rest) = value.split_once('@')?;
    let base = rest.split(':').next()?;
    Some(MmioWindow {
        base: parse_u64(base)?,
        size: parse_size(size)?,
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
        })
        .collect()
}
