//! The first bytes of a guest's TLS connection through the ClientHello parser that reads the
//! server name for the SNI policy (`netstack/src/tls/client_hello.rs`): records, reassembly
//! of a handshake message across records, the ClientHello body and its extensions.
//!
//! Properties: the parser looks at no more than `MAX_CLIENT_HELLO` bytes and never past what
//! it was given; a name it returns is a valid, lower-case domain name without a trailing dot;
//! a result does not change when bytes after the ClientHello's records are added or removed;
//! `Incomplete { need }` asks for more than it had and never for more than the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack::fuzz_entry::{parse_client_hello, HelloError, MAX_CLIENT_HELLO};
use policy::DomainName;

fuzz_target!(|data: &[u8]| {
    match parse_client_hello(data) {
        Ok(hello) => {
            assert!(hello.len <= data.len().min(MAX_CLIENT_HELLO));
            if let Some(name) = &hello.server_name {
                assert!(!name.ends_with('.'));
                assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
                let parsed = DomainName::parse(name).expect("a returned name is a domain name");
                assert_eq!(parsed.as_str(), name);
            }
            // Only the records that carry the ClientHello count.
            assert_eq!(parse_client_hello(&data[..hello.len]), Ok(hello.clone()));
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\x17\x03\x03\x00\x01x");
            assert_eq!(parse_client_hello(&longer), Ok(hello));
        }
        Err(HelloError::Incomplete { need }) => {
            assert!(
                need > data.len(),
                "asks for {need} with {} at hand",
                data.len()
            );
            assert!(need <= MAX_CLIENT_HELLO);
        }
        Err(_) => {}
    }
});
