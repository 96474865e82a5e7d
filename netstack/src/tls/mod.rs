//! TLS as far as the netstack needs it: reading the server name (SNI) out of a guest's
//! ClientHello so the policy can judge it before any host connection exists. There is no
//! TLS engine here and no interception: the bytes are only read, then forwarded unchanged.
//!
//! Owns the ClientHello parser ([`parse_client_hello`]); must never allocate more than the
//! bounded hold it is given, and never panic on guest input (it is a fuzz target).

mod client_hello;

pub use client_hello::{parse_client_hello, ClientHello, HelloError, MAX_CLIENT_HELLO};
