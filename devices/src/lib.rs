//! Virtio devices for ringfence (design §5).
