//! How long the netstack takes to recover from a burst of lost frames (issue 19 item 6): the
//! smoltcp-guest harness receives 1 MiB from a host peer per iteration, once on a clean link
//! and once with a burst of consecutive data frames towards the guest lost in every
//! iteration. The netstack is the sender on that path, so the difference between the two
//! times is its recovery (fast retransmit on duplicate ACKs, or its retransmission timer).
//! Both run in one criterion group, so compare them within one run.

use std::cell::Cell;
use std::io::Write;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netstack::testkit::{Fault, Harness};
use smoltcp::socket::tcp;

const CHUNK: usize = 1 << 20;
/// Data frames let through in each iteration before the burst.
const BEFORE_BURST: usize = 20;
/// Frames below this size (ACKs, window updates) are never counted or lost.
const DATA_FRAME: usize = 1000;

/// Receives `CHUNK` bytes per iteration; `burst` consecutive data frames to the guest are
/// lost in each.
fn bench_burst(c: &mut Criterion, burst: usize) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let source = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let buf = vec![0xa5u8; 1 << 16];
        while s.write_all(&buf).is_ok() {}
    });
    let mut h = Harness::new(netstack::NetConfig {
        dns_upstreams: vec!["127.0.0.1:9".parse().expect("addr")],
        ..netstack::NetConfig::default()
    });
    // Data frames seen since the iteration began; the burst is the frames after the first
    // BEFORE_BURST of them.
    let seen = Rc::new(Cell::new(usize::MAX));
    let counter = seen.clone();
    let lost = Rc::new(Cell::new(0u64));
    let lost_in_hook = lost.clone();
    h.fault_to_guest = Some(Box::new(move |frame: &[u8]| {
        if frame.len() < DATA_FRAME || counter.get() == usize::MAX {
            return Fault::Pass;
        }
        let n = counter.get() + 1;
        counter.set(n);
        if n > BEFORE_BURST && n <= BEFORE_BURST + burst {
            lost_in_hook.set(lost_in_hook.get() + 1);
            Fault::Drop
        } else {
            Fault::Pass
        }
    }));
    let s = h.connect_gateway_tcp(port, 49000, 256 * 1024);
    let mut buf = vec![0u8; 65536];
    let mut group = c.benchmark_group("recovery");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(format!("host_to_guest_1MiB_burst_{burst}"), |b| {
        b.iter(|| {
            seen.set(if burst == 0 { usize::MAX } else { 0 });
            let mut got = 0usize;
            h.run_until(10_000_000, Duration::from_secs(60), |h| {
                let sock = h.sockets.get_mut::<tcp::Socket>(s);
                while got < CHUNK && sock.can_recv() {
                    got += sock
                        .recv_slice(&mut buf[..(CHUNK - got).min(65536)])
                        .unwrap_or(0);
                }
                got >= CHUNK
            });
            assert_eq!(got, CHUNK, "the transfer did not recover within 60 s");
            got
        });
    });
    group.finish();
    // Proof the bursts happened (criterion prints nothing of the hook).
    println!("burst {burst}: {} data frames lost in all", lost.get());
    drop(h);
    // When a filter skipped the benchmark, nothing connected: one connection closed at once
    // ends the source's accept and its writes, so the join cannot hang.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)));
    let _ = source.join();
}

fn recovery(c: &mut Criterion) {
    for burst in [0, 1, 4, 16] {
        bench_burst(c, burst);
    }
}

criterion_group!(benches, recovery);
criterion_main!(benches);
