//! Guest memory shared by the boot targets.

use std::sync::OnceLock;

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory size of the boot targets: the low megabyte plus 7 MiB above 1 MiB.
pub const BOOT_MEM_BYTES: u64 = 8 << 20;

/// An 8 MiB guest, made once per process (the loaders only write into it).
pub fn boot_memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), BOOT_MEM_BYTES as usize)])
            .expect("boot fuzz guest memory")
    })
}
