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

/// The same path with smoltcp as the guest (what the datapath tests drive): 1 MiB from
/// the host to the guest per iteration, guest stack cost included.
fn harness_host_to_guest(c: &mut Criterion) {
    use netstack::testkit::Harness;
    use smoltcp::socket::tcp;
    use std::time::Duration;

    const CHUNK: usize = 1 << 20;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let source = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let buf = vec![0xa5u8; 1 << 16];
        while s.write_all(&buf).is_ok() {}
    });
    let mut h = Harness::new(netstack::NetConfig {
        dns_upstreams: vec!["127.0.0.1:9".parse().unwrap()],
        ..netstack::NetConfig::default()
    });
    let s = h.connect_gateway_tcp(port, 49000, 256 * 1024);
    let mut buf = vec![0u8; 65536];
    let mut group = c.benchmark_group("netstack");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.sample_size(20);
    group.bench_function("smoltcp_guest_host_to_guest_1MiB", |b| {
        b.iter(|| {
            let mut got = 0usize;
            h.run_until(1_000_000, Duration::from_secs(30), |h| {
                let sock = h.sockets.get_mut::<tcp::Socket>(s);
                while got < CHUNK && sock.can_recv() {
                    got += sock
                        .recv_slice(&mut buf[..(CHUNK - got).min(65536)])
                        .unwrap();
                }
                got >= CHUNK
            });
            got
        });
    });
    group.finish();
    drop(h);
    // When a filter skipped the benchmark, nothing connected: one connection closed at once
    // ends the source's accept and its writes, so the join cannot hang.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)));
    source.join().unwrap();
}

/// What one pass of the device worker's loop costs the user backend before any I/O, against
/// the number of established flows: the two timer queries, collecting the wanted polls and
/// matching them against the armed ones on the ring. Every flow but one is idle.
fn worker_pass_vs_flows(c: &mut Criterion) {
    use devices::event_loop::EventLoop;
    use devices::net::backend::user::UserBackend;
    use devices::net::backend::NetBackend;

    let mut group = c.benchmark_group("worker_pass");
    for flows in [1u16, 64, 256] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let acceptor = std::thread::spawn(move || {
            (0..flows)
                .map(|_| l.accept().unwrap().0)
                .collect::<Vec<_>>()
        });
        let mut g = SyntheticTcp::connect(port);
        g.open_idle(flows - 1);
        let held = acceptor.join().unwrap();
        let mut backend = UserBackend::new(g.into_netstack());
        let mut lp = EventLoop::new(512).unwrap();
        let mut interests = Vec::new();
        group.bench_function(format!("{flows}_flows"), |b| {
            b.iter(|| {
                let first = backend.next_deadline();
                interests.clear();
                backend.interests(true, &mut interests);
                lp.sync_fds(&interests).unwrap();
                (first, backend.next_deadline())
            });
        });
        drop(held);
    }
    group.finish();
}

criterion_group!(
    benches,
    guest_to_host,
    host_to_guest,
    harness_host_to_guest,
    worker_pass_vs_flows
);
criterion_main!(benches);
