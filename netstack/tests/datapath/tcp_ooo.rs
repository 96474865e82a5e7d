//! Guest -> host TCP robustness: out-of-order guest segments wait in the bounded
//! out-of-order queue (and are not resent by the guest), the bound drops the excess without
//! breaking the stream, a lost window update after a zero window is re-sent by the
//! netstack's window-update timer, and a guest's lost window update is recovered by the
//! netstack's window probes.

use std::cell::Cell;
use std::io::Read;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use netstack::testkit::{Fault, FaultHook, Harness};
use netstack::{NetConfig, NetMetrics};
use smoltcp::socket::tcp;

use crate::common::{
    cfg, connect_gateway, drain_guest_socket, every_nth_payload, jumbo_cfg, pattern,
    serve_download, tcp_fields, tcp_payload_len, tcp_socket, upload_step, wait_established,
};

/// A fault hook that loses the first window update (a pure ACK with a non-zero window) after
/// a zero window, and the flags it keeps: whether a zero window was seen, and how many
/// updates it dropped.
fn lose_first_window_update() -> (Rc<Cell<bool>>, Rc<Cell<u32>>, FaultHook) {
    let zero_seen = Rc::new(Cell::new(false));
    let dropped = Rc::new(Cell::new(0u32));
    let (zero, drops) = (zero_seen.clone(), dropped.clone());
    let hook: FaultHook = Box::new(move |f| {
        let Some((win, len)) = tcp_fields(f) else {
            return Fault::Pass;
        };
        if win == 0 {
            zero.set(true);
        } else if zero.get() && len == 0 && drops.get() == 0 {
            drops.set(1);
            return Fault::Drop;
        }
        Fault::Pass
    });
    (zero_seen, dropped, hook)
}

/// What an upload saw.
struct Upload {
    metrics: NetMetrics,
    /// Payload bytes the guest put on the wire (retransmissions included).
    guest_payload: u64,
}

/// Uploads `total` bytes from a guest socket with `buf`-byte buffers under `cfg`, passing
/// every guest frame through `fault`; checks the host got the exact stream.
fn upload(
    cfg: NetConfig,
    total: usize,
    buf: usize,
    mut fault: impl FnMut(&[u8]) -> Fault + 'static,
    local_port: u16,
) -> Upload {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let data = pattern(total, 31);
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut v = Vec::new();
        c.read_to_end(&mut v).unwrap();
        v
    });
    let mut h = Harness::new(cfg);
    let s = tcp_socket(&mut h, buf);
    connect_gateway(&mut h, s, port, local_port);
    assert!(wait_established(&mut h, s));
    let wire_bytes = Rc::new(Cell::new(0u64));
    let counter = wire_bytes.clone();
    h.fault = Some(Box::new(move |f| {
        counter.set(counter.get() + tcp_payload_len(f) as u64);
        fault(f)
    }));
    let mut sent = 0;
    let ok = h.run_until(2_000_000, Duration::from_secs(60), |h| {
        upload_step(h, s, &data, &mut sent)
    });
    assert!(ok, "upload stalled at {sent}: {:?}", h.ns.metrics());
    let got = server.join().unwrap();
    assert!(got == data, "host got {} bytes, stream differs", got.len());
    Upload {
        metrics: h.ns.metrics().clone(),
        guest_payload: wire_bytes.get(),
    }
}

/// Every 50th data segment overtaken by the next one: each arrives after a hole, is
/// queued, and goes to the host once the late one fills the hole. The guest resends
/// nothing (one duplicate ACK per reordering is below its fast-retransmit threshold).
#[test]
fn reordered_guest_segments_are_queued_and_not_resent() {
    let total = 2 << 20;
    let u = upload(
        cfg(),
        total,
        128 * 1024,
        every_nth_payload(50, Fault::Hold),
        41100,
    );
    let m = &u.metrics;
    assert!(m.tcp_ooo_queued >= 10, "{m:?}");
    assert!(m.tcp_ooo_flushed > 0, "{m:?}");
    assert_eq!(m.tcp_ooo_dropped, 0, "{m:?}");
    assert_eq!(m.drop_out_of_window, 0, "{m:?}");
    assert_eq!(m.bytes_guest_to_host, total as u64);
    // Without the queue every reordering costs a go-back-N resend of the guest's window.
    assert!(
        u.guest_payload < total as u64 + total as u64 / 100,
        "the guest sent {} payload bytes for {total}: it retransmitted",
        u.guest_payload
    );
}

/// Lost segments: the data behind each hole is queued and written as soon as the guest's
/// retransmission fills the hole, later.
#[test]
fn hole_filled_later_by_the_guest_releases_queued_data() {
    let total = 1 << 20;
    let mut n = 0u32;
    let u = upload(
        cfg(),
        total,
        64 * 1024,
        move |f| {
            if tcp_payload_len(f) > 0 {
                n += 1;
                if n == 40 || n == 400 {
                    return Fault::Drop;
                }
            }
            Fault::Pass
        },
        41101,
    );
    let m = &u.metrics;
    assert!(m.tcp_ooo_queued > 0, "{m:?}");
    assert!(m.tcp_ooo_flushed > 0, "{m:?}");
    assert_eq!(m.bytes_guest_to_host, total as u64);
}

/// A guest with a large window behind a hole sends more than 16 segments: the queue
/// keeps 16 and drops the rest; the stream still completes byte-exact through the
/// guest's retransmissions.
#[test]
fn more_out_of_order_data_than_the_bound_is_dropped() {
    let total = 4 << 20;
    let u = upload(
        cfg(),
        total,
        512 * 1024,
        every_nth_payload(600, Fault::Drop),
        41102,
    );
    let m = &u.metrics;
    assert!(m.tcp_ooo_queued > 0, "{m:?}");
    assert!(m.tcp_ooo_dropped > 0, "nothing exceeded the bound: {m:?}");
    assert_eq!(m.bytes_guest_to_host, total as u64);
}

/// With a 65520-byte MTU four guest segments exceed the 256 KiB byte bound before the
/// segment bound is near.
#[test]
fn the_byte_bound_holds_with_jumbo_segments() {
    let total = 16 << 20;
    let cfg = jumbo_cfg();
    let u = upload(
        cfg,
        total,
        2 << 20,
        every_nth_payload(60, Fault::Drop),
        41103,
    );
    let m = &u.metrics;
    assert!(m.tcp_ooo_queued > 0, "{m:?}");
    assert!(m.tcp_ooo_dropped > 0, "nothing exceeded the bound: {m:?}");
    assert_eq!(m.bytes_guest_to_host, total as u64);
}

/// The host stops reading, the guest fills the window to zero; then the host reads and
/// the netstack's window update is lost on the way to the guest. smoltcp sends no window
/// probes, so only the netstack's re-sent update lets the upload finish.
#[test]
fn a_lost_window_update_is_sent_again() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let total = 8 << 20;
    let data = pattern(total, 32);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        // Read nothing until the guest has seen a zero window.
        let _ = go_rx.recv();
        let mut v = Vec::new();
        c.read_to_end(&mut v).unwrap();
        v
    });
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 256 * 1024);
    connect_gateway(&mut h, s, port, 41104);
    assert!(wait_established(&mut h, s));
    let (zero_seen, dropped, hook) = lose_first_window_update();
    h.fault_to_guest = Some(hook);
    let mut sent = 0;
    let filled = h.run_until(2_000_000, Duration::from_secs(30), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        if sent < total && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
        }
        zero_seen.get()
    });
    assert!(filled, "no zero window after {sent} bytes");
    // Let the guest settle on the zero window, then let the host read.
    for _ in 0..50 {
        h.step(1);
    }
    go_tx.send(()).unwrap();
    let ok = h.run_until(4_000_000, Duration::from_secs(60), |h| {
        upload_step(h, s, &data, &mut sent)
    });
    let m = h.ns.metrics().clone();
    assert!(ok, "upload stalled at {sent}: {m:?}");
    assert_eq!(dropped.get(), 1, "no window update was lost");
    assert!(m.tcp_window_update_resends > 0, "{m:?}");
    let got = server.join().unwrap();
    assert!(got == data, "host got {} bytes, stream differs", got.len());
}

/// What the KVM fault test does: a 65520-byte MTU, 1 MiB guest buffers, and 5% of all
/// guest frames (pseudo-random, ACKs included) overtaken by the next one.
#[test]
fn jumbo_upload_with_random_reordering() {
    let total = 16 << 20;
    let cfg = jumbo_cfg();
    let mut x = 7u32;
    let u = upload(
        cfg,
        total,
        1 << 20,
        move |_f| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x % 100 < 5 {
                Fault::Hold
            } else {
                Fault::Pass
            }
        },
        41105,
    );
    let m = &u.metrics;
    assert!(m.tcp_ooo_queued > 0 && m.tcp_ooo_flushed > 0, "{m:?}");
    assert_eq!(m.bytes_guest_to_host, total as u64);
    assert!(
        u.guest_payload < total as u64 + total as u64 / 50,
        "the guest sent {} payload bytes for {total}",
        u.guest_payload
    );
}

/// The guest stops reading a download until its window is zero, then reads everything; its
/// window update is lost on the way to the netstack. The guest says nothing more, so only
/// the netstack's window probe (answered with the guest's current window) resumes the flow.
#[test]
fn a_lost_guest_window_update_is_recovered_by_a_probe() {
    let total = 1 << 20;
    let (port, expect, server) = serve_download(total, 33);
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 16 * 1024);
    connect_gateway(&mut h, s, port, 41106);
    assert!(wait_established(&mut h, s));
    let (zero_seen, dropped, hook) = lose_first_window_update();
    h.fault = Some(hook);
    let filled = h.run_until(100_000, Duration::from_secs(10), |_| zero_seen.get());
    assert!(filled, "the guest never advertised a zero window");
    for _ in 0..50 {
        h.step(1);
    }
    let mut got = Vec::with_capacity(total);
    let ok = h.run_until(1_000_000, Duration::from_secs(60), |h| {
        drain_guest_socket(h, s, &mut got);
        got.len() == total
    });
    let m = h.ns.metrics().clone();
    assert!(ok, "download stalled at {}: {m:?}", got.len());
    assert_eq!(dropped.get(), 1, "no window update was lost");
    assert!(m.tcp_window_probes > 0, "{m:?}");
    assert!(got == expect, "stream corrupted");
    server.join().unwrap();
}
