//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).
//!
//! `boot::load_kernel` reads the kernel from a path; the fuzz targets must not write files,
//! so this loads a kernel image held in memory through exactly the same code (format sniffing,
//! the bzImage size and header checks, linux-loader's ELF/PVH-note and bzImage parsers, the
//! command line and the boot structures). No initrd.
//!
//! [`api_requests`] feeds Firecracker-API requests to the API's state machine with its host
//! effects off (no file is opened or created, no VM starts).

use std::io::Cursor;
use std::path::Path;

use vm_memory::GuestMemoryMmap;

use crate::boot::{self, BootError, LoadedKernel};

/// Loads `image` into `mem` (of `mem_bytes` bytes) as `ringfence run --kernel` would, with
/// the command line `cmdline`.
pub fn load_kernel_bytes(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    image: &[u8],
    cmdline: &str,
) -> Result<LoadedKernel, BootError> {
    let cmdline = boot::build_cmdline(cmdline)?;
    let mut reader = Cursor::new(image);
    boot::load_kernel_from(
        mem,
        mem_bytes,
        &mut reader,
        image.len() as u64,
        Path::new("<fuzz input>"),
        None,
        &cmdline,
    )
}

/// Serves the requests in `input` — chunks separated by NUL bytes, each `METHOD PATH`, a
/// newline, then the JSON body — and checks every answer has Firecracker's shape.
pub fn api_requests(input: &[u8]) {
    let mut state = crate::api::state::ApiState::without_effects("fuzz");
    for chunk in input.split(|b| *b == 0).take(64) {
        let (head, body) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], &chunk[i + 1..]),
            None => (chunk, &[][..]),
        };
        let head = String::from_utf8_lossy(head);
        let (method, path) = head.split_once(' ').unwrap_or((&head, "/"));
        let reply = state.handle(method, path, body);
        match reply.status {
            204 => assert!(reply.body.is_none(), "204 with a body"),
            200 | 400 => {
                let body = reply.body.unwrap_or_default();
                let v: serde_json::Value =
                    serde_json::from_str(&body).expect("an answer body is JSON");
                if reply.status == 400 {
                    assert!(v.get("fault_message").is_some_and(|m| m.is_string()));
                }
            }
            other => panic!("status {other} is not one Firecracker's API answers"),
        }
    }
}
