//! TCP translation against real loopback servers.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use netstack::testkit::Harness;
use sha2::{Digest, Sha256};
use smoltcp::socket::tcp;

use crate::common::{
    cfg, connect_gateway, jumbo_cfg, pattern, serve_download, tcp_socket, wait_established,
    JUMBO_MTU,
};

#[test]
fn handshake_and_bulk_guest_to_host() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let total = 32 << 20;
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 65536];
        let mut n = 0usize;
        loop {
            let r = c.read(&mut buf).unwrap();
            if r == 0 {
                break;
            }
            hasher.update(&buf[..r]);
            n += r;
        }
        (n, hasher.finalize().to_vec())
    });
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 256 * 1024);
    connect_gateway(&mut h, s, port, 40000);
    assert!(wait_established(&mut h, s), "handshake did not complete");
    let data = pattern(total, 1);
    let mut sent = 0usize;
    let ok = h.run_until(2_000_000, Duration::from_secs(120), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        if sent < total && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
        }
        if sent == total && sock.state() == tcp::State::Established {
            sock.close();
        }
        sent == total && !sock.is_open()
            || sock.state() == tcp::State::TimeWait
            || sock.state() == tcp::State::FinWait2
    });
    assert!(ok, "guest could not push all data: sent {sent}");
    let (n, digest) = server.join().unwrap();
    assert_eq!(n, total);
    assert_eq!(digest, Sha256::digest(&data).to_vec());
    let m = h.ns.metrics();
    assert_eq!(m.bytes_guest_to_host, total as u64);
}

#[test]
fn bulk_host_to_guest_then_host_close() {
    let total = 32 << 20;
    let (port, data, server) = serve_download(total, 2);
    let expect = Sha256::digest(&data).to_vec();
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 256 * 1024);
    connect_gateway(&mut h, s, port, 40001);
    assert!(wait_established(&mut h, s));
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    let ok = h.run_until(2_000_000, Duration::from_secs(120), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        while sock.can_recv() {
            let n = sock.recv_slice(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            got += n;
        }
        got == total && sock.state() == tcp::State::CloseWait
    });
    assert!(
        ok,
        "received {got} of {total}; state {}",
        h.sockets.get::<tcp::Socket>(s).state()
    );
    assert_eq!(hasher.finalize().to_vec(), expect);
    server.join().unwrap();
    // Guest closes its side too: the flow must disappear.
    h.sockets.get_mut::<tcp::Socket>(s).close();
    let gone = h.run_until(100_000, Duration::from_secs(10), |h| h.ns.flow_count() == 0);
    assert!(gone, "flow not forgotten after both FINs");
}

#[test]
fn connect_refused_gives_guest_rst() {
    // Bind then drop to find a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s, port, 40002);
    let closed = h.run_until(100_000, Duration::from_secs(10), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed
    });
    assert!(closed, "guest socket not reset");
    assert_eq!(h.ns.metrics().connect_failures, 1);
    assert!(h.ns.metrics().rst_to_guest >= 1);
    assert_eq!(h.ns.flow_count(), 0);
}

/// With GUEST_TSO the device accepts 64 KiB frames: the netstack sends large segments
/// flagged as GSO instead of MSS-sized ones.
#[test]
fn large_frames_when_device_allows_them() {
    let total = 4 << 20;
    let (port, data, server) = serve_download(total, 9);
    let expect = Sha256::digest(&data).to_vec();
    let cfg = netstack::NetConfig {
        max_rx_frame: 65550,
        ..cfg()
    };
    let mut h = Harness::new(cfg);
    // The smoltcp guest takes whatever arrives (its own MTU only limits what it sends).
    h.wire.mtu = 65535;
    let big = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let big2 = big.clone();
    h.observe = Some(Box::new(move |f| {
        if f.len() > 1514 {
            big2.set(big2.get() + 1);
        }
    }));
    let s = tcp_socket(&mut h, 256 * 1024);
    connect_gateway(&mut h, s, port, 40003);
    assert!(wait_established(&mut h, s));
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    let ok = h.run_until(1_000_000, Duration::from_secs(60), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        while sock.can_recv() {
            let n = sock.recv_slice(&mut buf).unwrap();
            hasher.update(&buf[..n]);
            got += n;
        }
        got == total
    });
    assert!(ok, "received {got}");
    assert_eq!(hasher.finalize().to_vec(), expect);
    assert!(big.get() > 0, "no frame larger than one MTU was produced");
    server.join().unwrap();
}

/// A 65520-byte link MTU (what ringfence announces by default): the guest's SYN carries a
/// large MSS, it sends 64 KiB segments that each become one host write, and data to it comes
/// in frames of up to `mtu + 14` bytes without GSO; the bytes stay exact both ways.
#[test]
fn large_mtu_both_ways() {
    const MTU: u16 = JUMBO_MTU;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let total = 8 << 20;
    let up = pattern(total, 21);
    let down = pattern(total, 22);
    let (up_digest, down2) = (Sha256::digest(&up).to_vec(), down.clone());
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let writer = {
            let mut c = c.try_clone().unwrap();
            std::thread::spawn(move || c.write_all(&down2).unwrap())
        };
        let mut got = vec![0u8; total];
        c.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        Sha256::digest(&got).to_vec()
    });
    let mut h = Harness::new(jumbo_cfg());
    let big = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let big2 = big.clone();
    h.observe = Some(Box::new(move |f| {
        assert!(
            f.len() <= usize::from(MTU) + 14,
            "frame of {} bytes",
            f.len()
        );
        if f.len() > 1514 {
            big2.set(big2.get() + 1);
        }
    }));
    let s = tcp_socket(&mut h, 1 << 20);
    connect_gateway(&mut h, s, port, 40004);
    assert!(wait_established(&mut h, s));
    let (mut sent, mut got) = (0usize, 0usize);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 65536];
    let ok = h.run_until(1_000_000, Duration::from_secs(60), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        if sent < total && sock.can_send() {
            sent += sock.send_slice(&up[sent..]).unwrap();
        }
        while sock.can_recv() {
            let n = sock.recv_slice(&mut buf).unwrap();
            hasher.update(&buf[..n]);
            got += n;
        }
        // Everything sent must also be acknowledged, i.e. written to the host socket.
        sent == total && sock.send_queue() == 0 && got == total
    });
    assert!(ok, "sent {sent}, received {got}");
    assert_eq!(hasher.finalize().to_vec(), Sha256::digest(&down).to_vec());
    assert_eq!(server.join().unwrap(), up_digest);
    assert!(
        big.get() > 0,
        "no frame to the guest was larger than 1514 bytes"
    );
    let m = h.ns.metrics();
    let frames = m.guest_frames;
    assert!(
        frames < (total / 1460) as u64 / 4,
        "{frames} guest frames for {total} bytes: the guest did not use the large MTU"
    );
    // A send buffer smaller than two 64 KiB segments once made every writability event a
    // window update, and every update re-armed writability: an ACK storm.
    assert!(
        m.frames_to_guest < (total / 1460) as u64 / 4,
        "{} frames to the guest for {total} bytes each way",
        m.frames_to_guest
    );
}
