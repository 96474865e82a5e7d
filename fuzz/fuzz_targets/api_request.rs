//! Firecracker-API requests (method, path, JSON body) through `ringfence api`'s state
//! machine, with no host effects: every answer must be 204, 200 with JSON, or 400 with a
//! `fault_message`, and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringfence::fuzz_entry::api_requests(data);
});
