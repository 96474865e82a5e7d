//! Netstack per-segment cost with a synthetic guest (no guest TCP stack, no KVM):
//! guest -> host (parse a 1460-byte segment, `sendmsg` from the frame, build the ACK)
//! and host -> guest (peek 1460 bytes from the host socket straight into an RX buffer,
//! build headers and checksum, then take the guest's ACK and discard the bytes).
//! A host thread on 127.0.0.1 sinks or sources the stream.

use std::io::{Read, Write};
use std::net::TcpListener;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netstack::testkit::SyntheticTcp;

const SEG: usize = 1460;

fn guest_to_host(c: &mut Criterion) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    let mut g = SyntheticTcp::connect(port);
    let payload = vec![0x5au8; SEG];
    let mut group = c.benchmark_group("netstack");
    group.throughput(Throughput::Bytes(SEG as u64));
    group.bench_function("guest_to_host_segment_1460", |b| {
        b.iter(|| g.send_segment(&payload));
    });
    group.finish();
    drop(g);
    sink.join().unwrap();
}

fn host_to_guest(c: &mut Criterion) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let source = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let buf = vec![0xa5u8; 1 << 16];
        while s.write_all(&buf).is_ok() {}
    });
    let mut g = SyntheticTcp::connect(port);
    let mut group = c.benchmark_group("netstack");
    group.throughput(Throughput::Bytes(SEG as u64));
    group.bench_function("host_to_guest_segment_1460", |b| {
        b.iter(|| g.recv_segment());
    });
    group.finish();
    drop(g);
    source.join().unwrap();
}

criterion_group!(benches, guest_to_host, host_to_guest);
criterion_main!(benches);
