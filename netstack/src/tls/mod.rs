//! TLS as far as the netstack needs it: reading the server name (SNI) out of a guest's
//! ClientHello so the policy can judge it before any host connection exists, and handing a
//! judged flow to an interception proxy ([`TlsHandoff`]). There is no TLS engine here: the
//! bytes are only read, then forwarded unchanged (to the destination or to the proxy).
//!
//! Owns the ClientHello parser ([`parse_client_hello`]); must never allocate more than the
//! bounded hold it is given, and never panic on guest input (it is a fuzz target).

mod client_hello;
mod handoff;

pub use client_hello::{parse_client_hello, ClientHello, HelloError, MAX_CLIENT_HELLO};
pub use handoff::{HandedFlow, HandoffRef, TlsHandoff};
