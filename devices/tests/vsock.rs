//! virtio-vsock through the real transport, the harness driver playing a Linux guest:
//! Firecracker's host protocol (`CONNECT <port>\n` → `OK <host_port>\n`, guest connections to
//! `<uds_path>_<port>`), byte-exact relaying both ways beyond one credit window, and the
//! shutdown and reset semantics. Hostile input is in `vsock_hostile.rs`.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use devices::testing::VsockHarness;
use devices::vsock::muxer::FIRST_LOCAL_PORT;
use devices::vsock::packet::{Op, HDR_LEN, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};
use devices::vsock::VsockMetrics;

const T: Duration = Duration::from_secs(10);

/// Connects a host client to guest port `port` and completes the handshake; returns the
/// client (past the `OK` line) and the host-side port.
fn host_connect(h: &mut VsockHarness, port: u32) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(&h.uds_path).expect("connect to uds_path");
    client.set_read_timeout(Some(T)).expect("timeout");
    client
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("write CONNECT");
    let req = h.recv(T).expect("REQUEST");
    assert_eq!(req.header.operation(), Some(Op::Request), "{req:?}");
    assert_eq!(req.header.src_cid, HOST_CID);
    assert_eq!(req.header.dst_cid, h.guest_cid);
    assert_eq!(req.header.dst_port, port);
    assert!(req.header.buf_alloc > 0);
    assert_eq!(req.used_len, HDR_LEN as u32);
    let local = req.header.src_port;
    let resp = h.header(port, local, Op::Response);
    h.send(resp, &[]).expect("RESPONSE");
    let expect = format!("OK {local}\n");
    let mut line = vec![0u8; expect.len()];
    client.read_exact(&mut line).expect("OK line");
    assert_eq!(String::from_utf8_lossy(&line), expect);
    (client, local)
}

/// Reads until `n` bytes arrived (bounded by the client's read timeout).
fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("read");
    v
}

/// Whether the peer closed the socket (end of stream or reset) within the read timeout.
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 10) as u8)
        .collect()
}

#[test]
fn a_host_client_connects_gets_ok_and_talks_to_the_guest() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let (mut client, local) = host_connect(&mut h, 52);
    assert_eq!(
        local, FIRST_LOCAL_PORT,
        "Firecracker's first host-side port"
    );

    client.write_all(b"ping from host").expect("write");
    let p = h.recv(T).expect("RW");
    assert_eq!(p.header.operation(), Some(Op::Rw));
    assert_eq!((p.header.src_port, p.header.dst_port), (local, 52));
    assert_eq!(p.payload, b"ping from host");
    assert_eq!(p.used_len as usize, HDR_LEN + p.payload.len());

    let rw = h.header(52, local, Op::Rw);
    h.send(rw, b"pong from guest").expect("send");
    assert_eq!(read_n(&mut client, 15), b"pong from guest");

    // A second client gets the next port.
    let (_c2, local2) = host_connect(&mut h, 52);
    assert_eq!(local2, FIRST_LOCAL_PORT + 1);
    let m = &h.metrics;
    assert_eq!(VsockMetrics::get(&m.host_connects), 2);
    assert_eq!(VsockMetrics::get(&m.host_established), 2);
    assert_eq!(VsockMetrics::get(&m.connections_open), 2);
    assert_eq!(VsockMetrics::get(&m.bytes_host_to_guest), 14);
    assert_eq!(VsockMetrics::get(&m.bytes_guest_to_host), 15);
    assert_eq!(m.bad_total(), 0);
}

#[test]
fn bytes_after_the_connect_line_reach_the_guest_first() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let mut client = UnixStream::connect(&h.uds_path).expect("connect");
    client.set_read_timeout(Some(T)).expect("timeout");
    client.write_all(b"connect 7\nearly bytes").expect("write");
    let req = h.recv(T).expect("REQUEST");
    assert_eq!(req.header.dst_port, 7);
    let local = req.header.src_port;
    h.send(h.header(7, local, Op::Response), &[])
        .expect("RESPONSE");
    let mut got = Vec::new();
    while got.len() < 11 {
        let p = h.recv(T).expect("RW");
        assert_eq!(p.header.operation(), Some(Op::Rw), "{p:?}");
        got.extend(p.payload);
    }
    assert_eq!(got, b"early bytes");
}

#[test]
fn host_to_guest_data_beyond_the_guests_credit_waits_for_credit_updates() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    // A guest with an 8 KiB receive buffer that only tells the device what it consumed when
    // asked (CREDIT_REQUEST) — the device must never have more than 8 KiB in flight.
    h.buf_alloc = 8192;
    let (client, local) = host_connect(&mut h, 80);
    let data = pattern(1 << 20, 1);
    let writer = {
        let mut c = client.try_clone().expect("clone");
        let d = data.clone();
        std::thread::spawn(move || c.write_all(&d))
    };
    let mut got: Vec<u8> = Vec::with_capacity(data.len());
    let mut told_fwd = 0u32; // the fwd_cnt the device last heard from the guest
    let mut credit_requests = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < data.len() {
        assert!(Instant::now() < deadline, "stalled at {} bytes", got.len());
        let p = h.recv(T).expect("packet");
        match p.header.operation() {
            Some(Op::Rw) => {
                assert!(p.payload.len() <= 4096, "more than the RX buffer");
                got.extend(&p.payload);
                let in_flight = got.len() as u32 - told_fwd;
                assert!(
                    in_flight <= 8192,
                    "{in_flight} bytes in flight, credit was 8192"
                );
            }
            Some(Op::CreditRequest) => {
                credit_requests += 1;
                told_fwd = h.fwd_cnt;
                h.send(h.header(80, local, Op::CreditUpdate), &[])
                    .expect("credit update");
            }
            Some(Op::CreditUpdate) => {}
            other => panic!("unexpected {other:?}: {p:?}"),
        }
    }
    writer.join().expect("writer").expect("write all");
    assert_eq!(got, data, "byte-exact");
    assert!(credit_requests >= (1 << 20) / 8192 - 1, "{credit_requests}");
    // One more may be on its way: after the last byte the guest's credit is 0 again.
    let sent = VsockMetrics::get(&h.metrics.credit_requests_sent);
    assert!(
        sent == credit_requests as u64 || sent == credit_requests as u64 + 1,
        "device sent {sent}, guest saw {credit_requests}"
    );
}

#[test]
fn guest_to_host_data_beyond_the_devices_credit_is_buffered_within_it() {
    let mut h = VsockHarness::new(|c| c.buf_alloc = 16 * 1024).expect("harness");
    let (client, local) = host_connect(&mut h, 81);
    let data = pattern(3 << 20, 7);
    // The host reads nothing for a while, so the socket fills and the device buffers.
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let mut c = client.try_clone().expect("clone");
        let n = data.len();
        std::thread::spawn(move || {
            let _ = started_rx.recv();
            let mut v = vec![0u8; n];
            c.read_exact(&mut v).map(|()| v)
        })
    };
    let mut started = Some(started_tx);
    // The credit the device advertised in its REQUEST (consumed by `host_connect`).
    let mut dev_buf_alloc = 16 * 1024u32;
    let mut dev_fwd = 0u32;
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < data.len() {
        assert!(Instant::now() < deadline, "stalled at {sent} bytes");
        let credit = dev_buf_alloc.saturating_sub(sent as u32 - dev_fwd) as usize;
        if credit == 0 {
            if VsockMetrics::get(&h.metrics.bytes_buffered) > 0 {
                // The socket filled up and the device buffers: let the host read.
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
            let p = h.recv(Duration::from_secs(2));
            match p {
                Ok(p) if p.header.operation() == Some(Op::CreditUpdate) => {
                    dev_buf_alloc = p.header.buf_alloc;
                    dev_fwd = p.header.fwd_cnt;
                }
                Ok(p) => panic!("unexpected {p:?}"),
                Err(_) => {
                    h.send(h.header(81, local, Op::CreditRequest), &[])
                        .expect("credit request");
                }
            }
            continue;
        }
        let n = credit.min(4096).min(data.len() - sent);
        h.send(h.header(81, local, Op::Rw), &data[sent..sent + n])
            .expect("send");
        sent += n;
    }
    if let Some(s) = started.take() {
        let _ = s.send(());
    }
    let got = reader.join().expect("reader").expect("read all");
    assert!(got == data, "byte-exact");
    let m = &h.metrics;
    assert!(
        VsockMetrics::get(&m.bytes_buffered) > 0,
        "the socket was full at times"
    );
    assert!(VsockMetrics::get(&m.credit_updates_sent) > 0);
    // The worker counts a write right after the socket took it.
    let deadline = Instant::now() + T;
    while VsockMetrics::get(&m.bytes_guest_to_host) != data.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "bytes_guest_to_host never reached the total"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(m.bad_total(), 0, "the guest never exceeded its credit");
}

#[test]
fn a_guest_connection_reaches_a_listener_at_uds_path_port_or_gets_an_rst() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    // Nobody listens on 1234.
    h.send(h.header(40000, 1234, Op::Request), &[])
        .expect("REQUEST");
    let p = h.recv(T).expect("RST");
    assert_eq!(p.header.operation(), Some(Op::Rst));
    assert_eq!(
        (p.header.src_cid, p.header.dst_cid),
        (HOST_CID, h.guest_cid)
    );
    assert_eq!((p.header.src_port, p.header.dst_port), (1234, 40000));
    assert_eq!(VsockMetrics::get(&h.metrics.guest_refused), 1);

    let listener = UnixListener::bind(h.port_path(1235)).expect("bind");
    h.send(h.header(40001, 1235, Op::Request), &[])
        .expect("REQUEST");
    let p = h.recv(T).expect("RESPONSE");
    assert_eq!(p.header.operation(), Some(Op::Response), "{p:?}");
    assert_eq!((p.header.src_port, p.header.dst_port), (1235, 40001));
    let (mut server, _) = listener.accept().expect("accept");
    server.set_read_timeout(Some(T)).expect("timeout");
    h.send(h.header(40001, 1235, Op::Rw), b"hello host")
        .expect("RW");
    assert_eq!(read_n(&mut server, 10), b"hello host");
    server.write_all(b"hello guest").expect("write");
    let p = h.recv(T).expect("RW");
    assert_eq!(p.payload, b"hello guest");
    assert_eq!(VsockMetrics::get(&h.metrics.guest_connections), 1);
}

#[test]
fn the_guest_closing_ends_the_host_stream_and_the_device_resets_the_connection() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let (mut client, local) = host_connect(&mut h, 90);
    h.send(h.header(90, local, Op::Rw), b"last words")
        .expect("RW");
    let mut sd = h.header(90, local, Op::Shutdown);
    sd.flags = SHUTDOWN_BOTH;
    h.send(sd, &[]).expect("SHUTDOWN");
    assert_eq!(read_n(&mut client, 10), b"last words");
    assert!(closed(&mut client), "the client sees the end");
    let p = h.recv_skip_credit(T).expect("RST");
    assert_eq!(p.header.operation(), Some(Op::Rst), "{p:?}");
    assert_eq!((p.header.src_port, p.header.dst_port), (local, 90));
    assert_eq!(VsockMetrics::get(&h.metrics.connections_open), 0);
}

#[test]
fn half_closes_carry_over_in_both_directions() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let (mut client, local) = host_connect(&mut h, 91);
    // The host stops sending: the guest sees SHUTDOWN(SEND) only and may still talk.
    client.write_all(b"request").expect("write");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("half close");
    let p = h.recv(T).expect("RW");
    assert_eq!(p.payload, b"request");
    let p = h.recv_skip_credit(T).expect("SHUTDOWN");
    assert_eq!(p.header.operation(), Some(Op::Shutdown), "{p:?}");
    assert_eq!(p.header.flags, SHUTDOWN_SEND);
    h.send(h.header(91, local, Op::Rw), b"response")
        .expect("RW");
    assert_eq!(read_n(&mut client, 8), b"response");
    // Now the guest is done too: both directions are finished, the device resets.
    let mut sd = h.header(91, local, Op::Shutdown);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, &[]).expect("SHUTDOWN");
    assert!(closed(&mut client));
    let p = h.recv_skip_credit(T).expect("RST");
    assert_eq!(p.header.operation(), Some(Op::Rst), "{p:?}");
    assert_eq!(VsockMetrics::get(&h.metrics.connections_open), 0);
}

#[test]
fn a_client_that_goes_away_is_a_full_shutdown_then_the_guests_rst() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let (client, local) = host_connect(&mut h, 92);
    drop(client);
    let p = h.recv_skip_credit(T).expect("SHUTDOWN");
    assert_eq!(p.header.operation(), Some(Op::Shutdown), "{p:?}");
    assert_eq!(p.header.flags, SHUTDOWN_BOTH);
    h.send(h.header(92, local, Op::Rst), &[]).expect("RST");
    h.wait_tx_done(T).expect("tx");
    let deadline = Instant::now() + T;
    while VsockMetrics::get(&h.metrics.connections_open) != 0 {
        assert!(Instant::now() < deadline, "connection still open");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(VsockMetrics::get(&h.metrics.rst_received), 1);
    assert!(
        h.recv_none(Duration::from_millis(50)).is_none(),
        "no answer to an RST"
    );
}

#[test]
fn the_guest_refusing_to_receive_makes_host_writes_fail() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let (mut client, local) = host_connect(&mut h, 93);
    let mut sd = h.header(93, local, Op::Shutdown);
    sd.flags = SHUTDOWN_RCV;
    h.send(sd, &[]).expect("SHUTDOWN");
    h.wait_tx_done(T).expect("tx");
    let deadline = Instant::now() + T;
    let err = loop {
        assert!(Instant::now() < deadline, "writes never failed");
        match client.write_all(b"x") {
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::BrokenPipe, "{err}");
    // The guest can still send.
    h.send(h.header(93, local, Op::Rw), b"still here")
        .expect("RW");
    assert_eq!(read_n(&mut client, 10), b"still here");
}

#[test]
fn a_guest_rst_or_silence_closes_a_waiting_host_client() {
    let mut h =
        VsockHarness::new(|c| c.request_timeout = Duration::from_millis(200)).expect("harness");
    // The guest refuses.
    let mut client = UnixStream::connect(&h.uds_path).expect("connect");
    client.set_read_timeout(Some(T)).expect("timeout");
    client.write_all(b"CONNECT 5\n").expect("write");
    let req = h.recv(T).expect("REQUEST");
    h.send(h.header(5, req.header.src_port, Op::Rst), &[])
        .expect("RST");
    assert!(closed(&mut client), "refused client closed");
    // The guest never answers.
    let mut client = UnixStream::connect(&h.uds_path).expect("connect");
    client.set_read_timeout(Some(T)).expect("timeout");
    client.write_all(b"CONNECT 6\n").expect("write");
    let req = h.recv(T).expect("REQUEST");
    assert_eq!(req.header.dst_port, 6);
    assert!(closed(&mut client), "timed-out client closed");
    let p = h.recv(T).expect("RST after the timeout");
    assert_eq!(p.header.operation(), Some(Op::Rst));
    assert_eq!(VsockMetrics::get(&h.metrics.request_timeouts), 1);
    assert_eq!(VsockMetrics::get(&h.metrics.host_established), 0);
}

#[test]
fn guest_reset_mid_transfer_closes_every_host_client_and_the_listener_survives() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let (mut a, _) = host_connect(&mut h, 100);
    let listener = UnixListener::bind(h.port_path(2000)).expect("bind");
    h.send(h.header(50000, 2000, Op::Request), &[])
        .expect("REQUEST");
    assert_eq!(
        h.recv(T).expect("RESPONSE").header.operation(),
        Some(Op::Response)
    );
    let (mut b, _) = listener.accept().expect("accept");
    b.set_read_timeout(Some(T)).expect("timeout");
    // Mid-transfer: the host pushes more than the guest takes.
    a.write_all(&pattern(64 * 1024, 3)).expect("write");
    let first = h.recv(T).expect("RW");
    assert_eq!(first.header.operation(), Some(Op::Rw));
    assert_eq!(VsockMetrics::get(&h.metrics.connections_open), 2);

    h.driver.write_reg(devices::virtio::mmio::regs::STATUS, 0);
    assert!(closed(&mut a), "host-initiated client closed by the reset");
    assert!(
        closed(&mut b),
        "guest-initiated connection closed by the reset"
    );
    assert_eq!(VsockMetrics::get(&h.metrics.connections_open), 0);
    assert_eq!(VsockMetrics::get(&h.metrics.resets), 1);

    // The driver starts over; the same uds_path still serves.
    h.reinitialize().expect("re-init");
    let (mut c, local) = host_connect(&mut h, 100);
    h.send(h.header(100, local, Op::Rw), b"again").expect("RW");
    assert_eq!(read_n(&mut c, 5), b"again");
}
