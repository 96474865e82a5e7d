//! Zero-copy userspace netstack (design §6).
