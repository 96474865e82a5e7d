//! End-to-end tests of ringfence: shared helpers for the test files in `tests/tests/`.
//!
//! - [`asm`], [`images`] and [`conformance`] build tiny guest kernels at test time (no
//!   assembler needed) that check the boot protocols from inside the guest;
//! - [`harness`] finds the `ringfence` binary, detects whether KVM is usable, and runs guests
//!   through the real CLI;
//! - [`linux_image`] finds the image `cargo xtask image` built and boots it under QEMU TCG;
//! - [`nested`] runs Linux guests under ringfence inside an outer VM with emulated SVM.

pub mod asm;
pub mod conformance;
pub mod harness;
pub mod images;
pub mod linux_image;
pub mod nested;
