//! TCP edge cases: half-close, resets, zero window, loss, reordering, many connections,
//! limits.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::time::Duration;

use netstack::testkit::{Fault, Harness};
use netstack::{Limits, NetConfig};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetFrame, Ipv4Packet, TcpPacket};

use crate::common::{
    cfg, connect_gateway, drain_guest_socket, pattern, serve_download, serve_one, tcp_payload_len,
    tcp_socket, upload_step, wait_established,
};

/// Guest sends `req`, closes its write side; host reads to EOF, then answers and closes.
#[test]
fn guest_half_close_then_host_answers() {
    let (port, server) = serve_one(move |mut c| {
        let mut req = Vec::new();
        c.read_to_end(&mut req).unwrap();
        c.write_all(format!("got {}", req.len()).as_bytes())
            .unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        req
    });
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 65536);
    connect_gateway(&mut h, s, port, 41000);
    assert!(wait_established(&mut h, s));
    let req = pattern(10_000, 3);
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .send_slice(&req)
        .unwrap();
    h.sockets.get_mut::<tcp::Socket>(s).close();
    let mut answer = Vec::new();
    let ok = h.run_until(100_000, Duration::from_secs(10), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut buf = [0u8; 64];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut buf).unwrap();
            answer.extend_from_slice(&buf[..n]);
        }
        !sock.is_open() || sock.state() == tcp::State::TimeWait
    });
    assert!(ok, "state {}", h.sockets.get::<tcp::Socket>(s).state());
    assert_eq!(server.join().unwrap(), req);
    assert_eq!(answer, b"got 10000");
    assert!(h.run_until(10_000, Duration::from_secs(5), |h| h.ns.flow_count() == 0));
}

/// The report that the host connect completed never arrives (a lost wake-up): the guest's
/// SYN retransmission makes the netstack look for itself, instead of the flow hanging until
/// the 30 s connect timeout.
#[test]
fn a_lost_connect_completion_is_found_when_the_guest_retries_its_syn() {
    let (port, server) = serve_one(move |mut c| {
        c.write_all(b"hello").unwrap();
    });
    let mut h = Harness::new(cfg());
    h.deaf_to_fds = true;
    let s = tcp_socket(&mut h, 65536);
    connect_gateway(&mut h, s, port, 41007);
    // smoltcp retransmits its SYN after about a second (the host fd stays ready, so steps
    // do not wait: bound them by time).
    let ok = h.run_until(usize::MAX, Duration::from_secs(10), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Established
    });
    assert!(ok, "state {}", h.sockets.get::<tcp::Socket>(s).state());
    h.deaf_to_fds = false;
    let mut got = Vec::new();
    let ok = h.run_until(100_000, Duration::from_secs(10), |h| {
        drain_guest_socket(h, s, &mut got);
        got.len() >= 5
    });
    assert!(ok);
    assert_eq!(got, b"hello");
    server.join().unwrap();
}

#[test]
fn host_reset_reaches_guest() {
    let (port, server) = serve_one(move |c| {
        // SO_LINGER 0 + close = RST.
        linger_zero(&c);
        drop(c);
    });
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s, port, 41001);
    assert!(wait_established(&mut h, s));
    server.join().unwrap();
    let closed = h.run_until(100_000, Duration::from_secs(10), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed
    });
    assert!(
        closed,
        "guest state {}",
        h.sockets.get::<tcp::Socket>(s).state()
    );
    assert!(h.ns.metrics().rst_to_guest >= 1);
    assert_eq!(h.ns.flow_count(), 0);
}

fn linger_zero(c: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a live linger struct of the given size.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(r, 0);
}

#[test]
fn guest_reset_reaches_host() {
    let (port, server) = serve_one(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 16];
        c.read(&mut b).map_err(|e| e.kind())
    });
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s, port, 41002);
    assert!(wait_established(&mut h, s));
    h.sockets.get_mut::<tcp::Socket>(s).abort();
    h.run_until(10_000, Duration::from_secs(5), |h| h.ns.flow_count() == 0);
    assert_eq!(h.ns.flow_count(), 0);
    assert_eq!(
        server.join().unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
}

/// The guest stops reading: its window closes, the host blocks, nothing is lost; then
/// it reads everything.
#[test]
fn zero_window_then_resume() {
    let total = 2 << 20;
    let (port, expect, server) = serve_download(total, 4);
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 16 * 1024);
    connect_gateway(&mut h, s, port, 41003);
    assert!(wait_established(&mut h, s));
    // Let the guest buffer fill up without reading.
    h.run_until(2_000, Duration::from_secs(2), |h| {
        h.sockets.get::<tcp::Socket>(s).recv_queue() == 16 * 1024
    });
    assert_eq!(h.sockets.get::<tcp::Socket>(s).recv_queue(), 16 * 1024);
    for _ in 0..200 {
        h.step(1);
    }
    assert_eq!(h.sockets.get::<tcp::Socket>(s).recv_queue(), 16 * 1024);
    let mut got = Vec::with_capacity(total);
    let ok = h.run_until(1_000_000, Duration::from_secs(60), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut buf = [0u8; 8192];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got.len() == total
    });
    assert!(ok, "got {}", got.len());
    assert!(got == expect, "stream corrupted");
    server.join().unwrap();
}

/// Uploads 1 MiB through `fault`. The guest -> netstack path never loses frames in
/// production (a virtio queue), so the tests inject single faults: segments after a hole
/// wait in the out-of-order queue until the guest's retransmission fills it
/// (`tcp_ooo.rs` tests the queue itself).
fn lossy_upload(
    fault: impl FnMut(&[u8]) -> Fault + 'static,
    local_port: u16,
) -> netstack::NetMetrics {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let total = 1 << 20;
    let data = pattern(total, 5);
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut v = Vec::new();
        c.read_to_end(&mut v).unwrap();
        v
    });
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 64 * 1024);
    connect_gateway(&mut h, s, port, local_port);
    assert!(wait_established(&mut h, s));
    h.fault = Some(Box::new(fault));
    if std::env::var_os("NETSTACK_TRACE").is_some() {
        h.observe = Some(Box::new(|f| {
            let eth = EthernetFrame::new_checked(f).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            eprintln!(
                "to guest: ack {} win {} len {}",
                t.ack_number(),
                t.window_len(),
                t.payload().len()
            );
        }));
    }
    let mut sent = 0;
    let ok = h.run_until(2_000_000, Duration::from_secs(60), |h| {
        upload_step(h, s, &data, &mut sent)
    });
    if !ok {
        let sock = h.sockets.get::<tcp::Socket>(s);
        panic!(
            "upload stalled at {sent}: guest {} send_queue {} metrics {:?}",
            sock.state(),
            sock.send_queue(),
            h.ns.metrics()
        );
    }
    let got = server.join().unwrap();
    assert!(got == data, "host got {} bytes, stream differs", got.len());
    h.ns.metrics().clone()
}

#[test]
fn lost_guest_segments_are_retransmitted() {
    let mut n = 0u32;
    let m = lossy_upload(
        move |f| {
            if tcp_payload_len(f) > 0 {
                n += 1;
                if n == 20 || n == 200 {
                    return Fault::Drop;
                }
            }
            Fault::Pass
        },
        41004,
    );
    assert!(m.tcp_ooo_queued > 0, "later segments arrived after a hole");
    assert!(m.tcp_ooo_flushed > 0, "the queued segments went out: {m:?}");
}

#[test]
fn reordered_guest_segments_are_recovered() {
    let mut n = 0u32;
    let m = lossy_upload(
        move |f| {
            if tcp_payload_len(f) > 0 {
                n += 1;
                if n == 30 || n == 300 {
                    return Fault::Hold;
                }
            }
            Fault::Pass
        },
        41005,
    );
    assert!(m.tcp_ooo_queued > 0 && m.tcp_ooo_flushed > 0, "{m:?}");
}

#[test]
fn thousand_short_connections() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = 1000;
    let server = std::thread::spawn(move || {
        for _ in 0..count {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            c.write_all(&b).unwrap();
        }
    });
    let mut h = Harness::new(cfg());
    for i in 0..count {
        let s = tcp_socket(&mut h, 1024);
        connect_gateway(&mut h, s, port, 20000 + i as u16);
        assert!(wait_established(&mut h, s), "connection {i}");
        let msg = (i as u32).to_be_bytes();
        h.sockets
            .get_mut::<tcp::Socket>(s)
            .send_slice(&msg)
            .unwrap();
        let mut echo = Vec::new();
        let ok = h.run_until(10_000, Duration::from_secs(10), |h| {
            let sock = h.sockets.get_mut::<tcp::Socket>(s);
            let mut b = [0u8; 4];
            while sock.can_recv() {
                let n = sock.recv_slice(&mut b).unwrap();
                echo.extend_from_slice(&b[..n]);
            }
            echo.len() == 4 && sock.state() == tcp::State::CloseWait
        });
        assert!(ok, "connection {i}: echo {echo:?}");
        assert_eq!(echo, msg);
        h.sockets.get_mut::<tcp::Socket>(s).close();
        assert!(h.run_until(10_000, Duration::from_secs(5), |h| h.ns.flow_count() == 0));
        h.sockets.remove(s);
    }
    server.join().unwrap();
    let m = h.ns.metrics();
    assert_eq!(m.flows_opened, count as u64);
    assert_eq!(m.flows_closed, count as u64);
}

#[test]
fn connection_limit_refuses_new_flows_only() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let keep = std::thread::spawn(move || {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(l.accept().unwrap().0);
        }
        std::thread::sleep(Duration::from_secs(2));
        v.len()
    });
    let cfg = NetConfig {
        limits: Limits {
            max_tcp_connections: 3,
            ..Limits::default()
        },
        ..cfg()
    };
    let mut h = Harness::new(cfg);
    let mut socks = Vec::new();
    for i in 0..3 {
        let s = tcp_socket(&mut h, 4096);
        connect_gateway(&mut h, s, port, 42000 + i);
        assert!(wait_established(&mut h, s));
        socks.push(s);
    }
    let extra = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, extra, port, 42010);
    assert!(
        !wait_established(&mut h, extra),
        "4th connection must be refused"
    );
    assert_eq!(h.ns.metrics().flows_over_limit, 1);
    // The first three still work.
    for &s in &socks {
        assert_eq!(
            h.sockets.get::<tcp::Socket>(s).state(),
            tcp::State::Established
        );
        assert!(h.sockets.get_mut::<tcp::Socket>(s).send_slice(b"x").is_ok());
    }
    h.run_until(1000, Duration::from_secs(1), |_| false);
    for &s in &socks {
        assert_eq!(
            h.sockets.get::<tcp::Socket>(s).state(),
            tcp::State::Established
        );
    }
    drop(keep);
}

/// Data segments to the guest are lost: the guest's duplicate ACKs / our timer rewind
/// the peek offset and the stream arrives intact (retransmitted from the host socket's
/// queue, never from a copy of ours).
fn download_with_losses(no_peek_off: bool, local_port: u16) {
    let total = 1 << 20;
    let (port, expect, server) = serve_download(total, 6);
    let mut h = Harness::new(cfg());
    if no_peek_off {
        h.ns.emulate_no_peek_off();
    }
    let s = tcp_socket(&mut h, 64 * 1024);
    connect_gateway(&mut h, s, port, local_port);
    assert!(wait_established(&mut h, s));
    let mut n = 0u32;
    h.fault_to_guest = Some(Box::new(move |f| {
        if tcp_payload_len(f) > 0 {
            n += 1;
            if n == 10 || n == 100 || n == 101 || n == 400 {
                return Fault::Drop;
            }
        }
        Fault::Pass
    }));
    let mut got = Vec::with_capacity(total);
    let ok = h.run_until(1_000_000, Duration::from_secs(60), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut buf = [0u8; 16384];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got.len() == total
    });
    assert!(ok, "got {} metrics {:?}", got.len(), h.ns.metrics());
    assert!(got == expect, "stream corrupted");
    assert!(h.ns.metrics().retransmits >= 1);
    server.join().unwrap();
}

#[test]
fn lost_segments_to_guest_are_retransmitted_from_socket() {
    download_with_losses(false, 41006);
}

/// Same with the pre-6.10 fallback (no `SO_PEEK_OFF` on TCP sockets).
#[test]
fn lost_segments_to_guest_without_peek_offset() {
    download_with_losses(true, 41007);
}

/// The guest's ACKs stop while a download fills the host socket with bytes in flight: the
/// kernel then reports the socket readable on every poll whatever SO_RCVLOWAT says (receive
/// memory nearly full, window closed), with nothing new to peek. The flow must wait for the
/// guest's ACK instead of waking the loop each round, and resume intact once ACKs flow.
#[test]
fn download_waits_for_the_guest_ack_when_the_host_socket_is_full() {
    let total = 32 << 20;
    let data = pattern(total, 17);
    let sent = data.clone();
    let (port, _server) = serve_one(move |mut c| {
        // The netstack resets the connection if the test fails early; the write error then
        // is expected.
        let _ = c.write_all(&data);
    });
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 8 << 20);
    connect_gateway(&mut h, s, port, 41700);
    assert!(wait_established(&mut h, s));
    let mut got = Vec::new();
    assert!(
        h.run_until(100_000, Duration::from_secs(10), |h| {
            drain_guest_socket(h, s, &mut got);
            got.len() >= 1 << 20
        }),
        "the download did not start"
    );

    // The guest keeps reading (its window stays open) but none of its frames arrive.
    h.fault = Some(Box::new(|_| Fault::Drop));
    let before = h.ns.metrics().tcp_readable_nothing_new;
    for _ in 0..40 {
        h.step(5);
        drain_guest_socket(&mut h, s, &mut got);
    }
    let wakeups = h.ns.metrics().tcp_readable_nothing_new - before;
    assert!(
        wakeups < 10,
        "{wakeups} readiness reports with nothing new in 40 loop rounds without guest ACKs"
    );

    h.fault = None;
    let done = h.run_until(1_000_000, Duration::from_secs(30), |h| {
        drain_guest_socket(h, s, &mut got);
        got.len() >= total
    });
    assert!(done, "download stalled at {} of {total} bytes", got.len());
    assert!(
        got == sent,
        "downloaded bytes differ from what the host sent"
    );
}
