//! Network policy for ringfence sandboxes (design §7).
