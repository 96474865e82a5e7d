//! Malformed guest frames are dropped and counted, never a panic.

use std::io::{IoSlice, IoSliceMut};
use std::time::Instant;

use netstack::{FlowGate, FlowInfo, NetConfig, Netstack, TxMeta, Verdict};
use proptest::prelude::*;

/// Only flows to the gateway (host loopback) may open: mutated frames must never make
/// the test talk to a real outside address.
struct LoopbackOnly;

impl FlowGate for LoopbackOnly {
    fn decide(&self, flow: &FlowInfo<'_>) -> Verdict {
        if flow.to_host {
            Verdict::ALLOW
        } else {
            Verdict::DENY
        }
    }
    fn decide_dns(&self, _name: &str) -> Verdict {
        Verdict::DENY
    }
}

fn ns() -> Netstack {
    let cfg = NetConfig {
        dns_upstreams: vec!["127.0.0.1:9".parse().unwrap()],
        ..NetConfig::default()
    };
    Netstack::with_gate(cfg, Box::new(LoopbackOnly)).unwrap()
}

/// Drains whatever the netstack wants to send (must not panic either).
fn drain(ns: &mut Netstack) {
    let mut buf = vec![0u8; 2048];
    for _ in 0..64 {
        let mut b = [IoSliceMut::new(&mut buf)];
        if ns.next_guest_frame(&mut b, Instant::now()).is_none() {
            break;
        }
    }
}

/// A valid TCP SYN from the guest to the gateway (to be mutated).
fn valid_syn() -> Vec<u8> {
    let mut f = vec![
        0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00,
    ];
    let ip = [
        0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0, 172, 16, 0, 2, 172, 16, 0, 1,
    ];
    f.extend_from_slice(&ip);
    let tcp = [
        0x9c, 0x40, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0, 0, 0, 0, 2, 4, 5, 0xb4,
    ];
    f.extend_from_slice(&tcp);
    f
}

#[test]
fn truncated_headers_are_counted() {
    let mut n = ns();
    let syn = valid_syn();
    for len in [0, 5, 13, 14, 20, 33, 34, 40, 53] {
        n.handle_guest_frame(
            &[IoSlice::new(&syn[..len])],
            TxMeta::default(),
            Instant::now(),
        );
    }
    drain(&mut n);
    let m = n.metrics();
    assert_eq!(m.guest_frames, 9);
    assert_eq!(m.drop_malformed, 9, "{m:?}");
    assert_eq!(n.flow_count(), 0);
}

#[test]
fn ip_length_larger_than_frame_is_dropped() {
    let mut n = ns();
    let mut syn = valid_syn();
    syn[16] = 0x05; // total length 1324 > frame
    n.handle_guest_frame(&[IoSlice::new(&syn)], TxMeta::default(), Instant::now());
    assert_eq!(n.metrics().drop_malformed, 1);
    // TCP data offset beyond the segment.
    let mut syn = valid_syn();
    syn[34 + 12] = 0xf0;
    n.handle_guest_frame(&[IoSlice::new(&syn)], TxMeta::default(), Instant::now());
    assert_eq!(n.metrics().drop_malformed, 2);
}

#[test]
fn spoofed_source_is_foreign() {
    let mut n = ns();
    let mut syn = valid_syn();
    syn[14 + 15] = 99; // source 172.16.0.99
    n.handle_guest_frame(&[IoSlice::new(&syn)], TxMeta::default(), Instant::now());
    assert_eq!(n.metrics().drop_foreign, 1);
    assert_eq!(n.flow_count(), 0);
}

#[test]
fn frame_split_across_many_segments_parses() {
    let mut n = ns();
    let syn = valid_syn();
    let parts: Vec<IoSlice<'_>> = syn.chunks(3).map(IoSlice::new).collect();
    n.handle_guest_frame(&parts, TxMeta::default(), Instant::now());
    let m = n.metrics();
    assert_eq!(m.drop_malformed, 0, "{m:?}");
    assert_eq!(m.tcp_frames, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600), split in 1usize..64) {
        let mut n = ns();
        let parts: Vec<IoSlice<'_>> = bytes.chunks(split).map(IoSlice::new).collect();
        n.handle_guest_frame(&parts, TxMeta::default(), Instant::now());
        drain(&mut n);
        prop_assert_eq!(n.metrics().guest_frames, 1);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        kind in 0usize..4,
        flips in proptest::collection::vec((0usize..80, any::<u8>()), 1..6),
    ) {
        let mut f = match kind {
            0 => valid_syn(),
            1 => { let mut f = valid_syn(); f[14 + 9] = 17; f } // UDP
            2 => { let mut f = valid_syn(); f[14 + 9] = 1; f }  // ICMP
            _ => { let mut f = valid_syn(); f[12] = 0x08; f[13] = 0x06; f } // ARP
        };
        for (i, b) in flips {
            if i < f.len() { f[i] = b; }
        }
        let mut n = ns();
        n.handle_guest_frame(&[IoSlice::new(&f)], TxMeta::default(), Instant::now());
        drain(&mut n);
        n.on_timer(Instant::now());
        prop_assert_eq!(n.metrics().guest_frames, 1);
    }
}
