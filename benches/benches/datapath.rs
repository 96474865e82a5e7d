//! Per-frame cost of the virtio-net datapath through the real transport, device and worker
//! thread, driven by the in-process harness (no KVM) with the in-memory loopback backend.
//!
//! TX: the driver writes a batch of frames into guest memory, publishes them, kicks once if
//! the device asks for it, and waits until all come back on the used ring.
//! RX: the backend holds a batch of frames, the driver posts a batch of buffers, and waits
//! until all frames are delivered (read back out of guest memory).
//! The figures include the harness's own driver work (writing/reading guest memory), which a
//! real guest also does, and the loopback's copy into/out of a `Vec`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use devices::net::backend::loopback::LoopbackMode;
use devices::net::header::VirtioNetHdr;
use devices::net::{NetConfig, TX_QUEUE};
use devices::testing::{NetHarness, TxChainBench};

const T: Duration = Duration::from_secs(10);

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0xabu8; len];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

fn tx(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio_net_tx");
    for &len in &[64usize, 1500] {
        for &batch in &[1usize, 32] {
            let mut h = NetHarness::new(LoopbackMode::Discard, NetConfig::default(), u64::MAX)
                .expect("harness");
            let mut buf = VirtioNetHdr::default().to_bytes().to_vec();
            buf.extend(frame(len));
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("{len}B"), batch),
                &batch,
                |b, &batch| {
                    b.iter(|| {
                        for _ in 0..batch {
                            h.driver.add_chain(TX_QUEUE, &[&buf], &[]).expect("add");
                        }
                        h.driver.kick(TX_QUEUE);
                        h.driver.wait_used(TX_QUEUE, batch, T).expect("used");
                    })
                },
            );
        }
    }
    g.finish();
}

fn rx(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio_net_rx");
    for &len in &[64usize, 1500] {
        for &batch in &[1usize, 32] {
            let mut h = NetHarness::new(LoopbackMode::Capture, NetConfig::default(), u64::MAX)
                .expect("harness");
            let f = frame(len);
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("{len}B"), batch),
                &batch,
                |b, &batch| {
                    b.iter(|| {
                        for _ in 0..batch {
                            h.backend.inject(&f);
                        }
                        h.driver.post_rx(batch, 2048).expect("post");
                        let got = h.driver.recv_frames(batch, T).expect("frames");
                        assert_eq!(got.len(), batch);
                    })
                },
            );
        }
    }
    g.finish();
}

/// Descriptor-chain handling alone (no thread handoff): pop, validate, parse, publish.
fn chains(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio_net_tx_chain");
    for &len in &[64usize, 1500] {
        let mut fixture = TxChainBench::new(len, 64).expect("fixture");
        g.throughput(Throughput::Elements(u64::from(fixture.batch())));
        g.bench_function(BenchmarkId::new(format!("{len}B"), 64), |b| {
            b.iter(|| fixture.run())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = chains, tx, rx
}
criterion_main!(benches);
