//! The probe ELF. All code (PVH entry stub, runtime, driver, scenarios) is in
//! the `probe` library; this binary only links it. The linker finds the
//! library's objects through the entry symbol `pvh_start32` (see `link.ld`).

#![no_std]
#![no_main]

use probe as _;
