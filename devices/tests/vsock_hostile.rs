//! virtio-vsock against hostile input: malformed CONNECT lines from host clients, malformed
//! or misaddressed packets and chains from the guest, a guest overrunning its credit, and the
//! connection limit. Everything is dropped or refused, counted, and the device keeps serving.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use devices::testing::{RawDesc, VsockHarness, MEM_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use devices::vsock::packet::{Header, Op, HDR_LEN, HOST_CID};
use devices::vsock::{BadPacket, VsockMetrics, RX_QUEUE, TX_QUEUE};
use vm_memory::{Bytes, GuestAddress};

const T: Duration = Duration::from_secs(10);

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

/// Reads the client's `OK <port>\n` line (all of it: a client closing with unread bytes
/// resets its connection instead of ending it).
fn read_ok(c: &mut UnixStream) {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        c.read_exact(&mut b).expect("OK line");
        line.push(b[0]);
    }
    assert!(line.starts_with(b"OK "), "{line:?}");
}

fn client(h: &VsockHarness) -> UnixStream {
    let c = UnixStream::connect(&h.uds_path).expect("connect");
    c.set_read_timeout(Some(T)).expect("timeout");
    c
}

/// The device still completes a host-initiated handshake.
fn still_serves(h: &mut VsockHarness) {
    let mut c = client(h);
    c.write_all(b"CONNECT 4000\n").expect("write");
    let req = h.recv(T).expect("REQUEST");
    assert_eq!(req.header.operation(), Some(Op::Request), "{req:?}");
    h.send(h.header(4000, req.header.src_port, Op::Response), &[])
        .expect("RESPONSE");
    read_ok(&mut c);
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn malformed_connect_lines_close_the_client_and_reach_no_guest() {
    let mut h = VsockHarness::new(|c| c.connect_line_timeout = Duration::from_millis(300))
        .expect("harness");
    let lines: [&[u8]; 7] = [
        b"CONNECT 52                                        \n", // no newline within 32
        b"CONNECT abc\n",
        b"CONNECT 99999999999\n",
        b"HELLO 52\n",
        b"CONNECT 52 53\n",
        b"\xff\xfe\xfd\n",
        b"CONNECT 5", // then end of stream
    ];
    for line in lines {
        let mut c = client(&h);
        c.write_all(line).expect("write");
        if !line.ends_with(b"\n") {
            c.shutdown(std::net::Shutdown::Write).expect("half close");
        }
        assert!(
            closed(&mut c),
            "{:?} left the client open",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(VsockMetrics::get(&h.metrics.connect_lines_bad), 7);
    // A client that never finishes its line is closed after the timeout.
    let mut slow = client(&h);
    slow.write_all(b"CONN").expect("write");
    assert!(closed(&mut slow));
    assert_eq!(VsockMetrics::get(&h.metrics.connect_line_timeouts), 1);
    assert!(
        h.recv_none(Duration::from_millis(50)).is_none(),
        "nothing reached the guest"
    );
    assert_eq!(VsockMetrics::get(&h.metrics.host_connects), 0);
    still_serves(&mut h);
}

#[test]
fn bad_headers_are_dropped_or_refused_and_counted() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let m = h.metrics.clone();

    // Shorter than a header: dropped.
    h.send_raw(&Header::default(), &[]).ok();
    let short = [0u8; 20];
    h.driver.add_chain(TX_QUEUE, &[&short], &[]).expect("chain");
    h.driver.kick(TX_QUEUE);
    // len beyond the buffers: dropped.
    let mut over = h.header(1, 2, Op::Rw);
    over.len = 1000;
    h.send_raw(&over, &[0u8; 10]).expect("send");
    // len beyond the largest packet (checked before the buffers): dropped.
    let mut huge = h.header(1, 2, Op::Rw);
    huge.len = 70_000;
    h.send_raw(&huge, &[0u8; 16]).expect("send");
    // From another CID: dropped, nobody to answer.
    let mut spoofed = h.header(1, 2, Op::Request);
    spoofed.src_cid = 7;
    h.send(spoofed, &[]).expect("send");
    h.wait_tx_done(T).expect("tx");
    assert!(
        h.recv_none(Duration::from_millis(50)).is_none(),
        "dropped, not answered"
    );
    // `Header::default()` has src_cid 0: also a wrong source.
    assert_eq!(m.bad_count(BadPacket::WrongSrcCid), 2);
    assert_eq!(m.bad_count(BadPacket::HeaderTooShort), 1);
    assert_eq!(m.bad_count(BadPacket::LenBeyondBuffer), 1);
    assert_eq!(m.bad_count(BadPacket::TooLong), 1);

    // To another CID: an RST from the CID it addressed, so the guest's socket sees it.
    let mut elsewhere = h.header(10, 20, Op::Request);
    elsewhere.dst_cid = 5;
    h.send(elsewhere, &[]).expect("send");
    let p = h.recv(T).expect("RST");
    assert_eq!(p.header.operation(), Some(Op::Rst));
    assert_eq!((p.header.src_cid, p.header.dst_cid), (5, h.guest_cid));
    assert_eq!((p.header.src_port, p.header.dst_port), (20, 10));
    // Another socket type, an undefined op, data for no connection: RSTs.
    let mut dgram = h.header(11, 21, Op::Request);
    dgram.type_ = 2;
    h.send(dgram, &[]).expect("send");
    let mut unknown_op = h.header(12, 22, Op::Rw);
    unknown_op.op = 99;
    h.send(unknown_op, &[]).expect("send");
    h.send(h.header(13, 23, Op::Rw), b"data").expect("send");
    for (src, dst) in [(21, 11), (22, 12), (23, 13)] {
        let p = h.recv(T).expect("RST");
        assert_eq!(p.header.operation(), Some(Op::Rst), "{p:?}");
        assert_eq!(
            (p.header.src_cid, p.header.src_port, p.header.dst_port),
            (HOST_CID, src, dst)
        );
    }
    // An RST for no connection is not answered.
    h.send(h.header(14, 24, Op::Rst), &[]).expect("send");
    h.wait_tx_done(T).expect("tx");
    assert!(h.recv_none(Duration::from_millis(50)).is_none());
    assert_eq!(m.bad_count(BadPacket::WrongDstCid), 1);
    assert_eq!(m.bad_count(BadPacket::BadType), 1);
    assert_eq!(m.bad_count(BadPacket::BadOp), 1);
    assert_eq!(m.bad_count(BadPacket::UnknownConnection), 1);
    assert_eq!(VsockMetrics::get(&m.rst_sent), 4);
    still_serves(&mut h);
}

#[test]
fn hostile_chains_are_returned_empty_and_counted() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    let m = h.metrics.clone();
    let hdr = h.header(1, 2, Op::Request).to_bytes();
    let a = h.driver.slot_addr(TX_QUEUE, 200);
    h.driver
        .memory()
        .write_slice(&hdr, GuestAddress(a))
        .expect("write header");
    // A device-writable buffer on TX.
    h.driver.add_raw_chain(
        TX_QUEUE,
        &[200],
        &[RawDesc {
            addr: a,
            len: HDR_LEN as u32,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        }],
        None,
    );
    // A header outside guest memory.
    h.driver.add_raw_chain(
        TX_QUEUE,
        &[201],
        &[RawDesc {
            addr: MEM_SIZE as u64 - 10,
            len: HDR_LEN as u32,
            flags: 0,
            next: 0,
        }],
        None,
    );
    // A loop.
    h.driver.add_raw_chain(
        TX_QUEUE,
        &[202, 203],
        &[
            RawDesc {
                addr: a,
                len: 8,
                flags: VRING_DESC_F_NEXT,
                next: 203,
            },
            RawDesc {
                addr: a,
                len: 8,
                flags: VRING_DESC_F_NEXT,
                next: 202,
            },
        ],
        None,
    );
    h.driver.kick_always(TX_QUEUE);
    let used = h.driver.wait_used(TX_QUEUE, 3, T).expect("returned");
    assert!(used.iter().all(|e| e.len == 0));
    assert_eq!(m.bad_count(BadPacket::WrongDirection), 1);
    assert_eq!(m.bad_count(BadPacket::OutOfMemory), 1);
    assert!(
        m.bad_count(BadPacket::Truncated) + m.bad_count(BadPacket::TooManyDescriptors) == 1,
        "the loop is cut"
    );
    assert!(h.recv_none(Duration::from_millis(50)).is_none());
    still_serves(&mut h);
}

#[test]
fn an_rx_buffer_without_room_for_payload_is_returned_empty() {
    let mut h = VsockHarness::with_defaults().expect("harness");
    // Start over with an RX ring holding a header-only buffer, then a good one.
    h.driver.write_reg(devices::virtio::mmio::regs::STATUS, 0);
    h.driver.initialize(u64::MAX).expect("init");
    h.driver
        .add_chain(RX_QUEUE, &[], &[HDR_LEN as u32])
        .expect("short buffer");
    h.driver
        .add_chain(RX_QUEUE, &[], &[HDR_LEN as u32 + 4096])
        .expect("good buffer");
    h.driver.kick_always(RX_QUEUE);
    // An RST for a misaddressed packet needs a buffer: the short one is refused, the good
    // one carries it.
    let mut elsewhere = h.header(10, 20, Op::Request);
    elsewhere.dst_cid = 9;
    h.send(elsewhere, &[]).expect("send");
    let used = h.driver.wait_used(RX_QUEUE, 2, T).expect("both used");
    assert_eq!(used[0].len, 0, "short buffer returned empty");
    assert_eq!(
        used[1].len, HDR_LEN as u32,
        "the RST went into the good one"
    );
    assert_eq!(h.metrics.bad_count(BadPacket::HeaderTooShort), 1);
}

#[test]
fn a_guest_that_overruns_its_credit_is_reset() {
    let mut h = VsockHarness::new(|c| c.buf_alloc = 8192).expect("harness");
    // A host listener that never reads.
    let listener = std::os::unix::net::UnixListener::bind(h.port_path(3000)).expect("bind");
    h.send(h.header(60000, 3000, Op::Request), &[])
        .expect("REQUEST");
    let resp = h.recv(T).expect("RESPONSE");
    assert_eq!(resp.header.buf_alloc, 8192);
    let (_server, _) = listener.accept().expect("accept");
    // Fill the socket, then the device's 8 KiB, then one more packet.
    let chunk = vec![0x5au8; 4096];
    let deadline = Instant::now() + T;
    while VsockMetrics::get(&h.metrics.bytes_buffered) == 0 {
        assert!(Instant::now() < deadline, "the socket never filled");
        h.send(h.header(60000, 3000, Op::Rw), &chunk).expect("RW");
        h.wait_tx_done(T).expect("tx");
    }
    for _ in 0..3 {
        h.send(h.header(60000, 3000, Op::Rw), &chunk).expect("RW");
    }
    h.wait_tx_done(T).expect("tx");
    let mut saw_rst = false;
    while let Some(p) = h.recv_none(Duration::from_millis(200)) {
        saw_rst |= p.header.operation() == Some(Op::Rst);
    }
    assert!(saw_rst, "the connection was reset");
    assert_eq!(h.metrics.bad_count(BadPacket::CreditExceeded), 1);
    assert_eq!(VsockMetrics::get(&h.metrics.connections_open), 0);
    assert!(
        VsockMetrics::get(&h.metrics.bytes_buffered) <= 8192,
        "never more buffered than advertised"
    );
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let mut h = VsockHarness::new(|c| c.max_connections = 2).expect("harness");
    let mut held = Vec::new();
    for port in [1, 2] {
        let mut c = client(&h);
        c.write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("write");
        let req = h.recv(T).expect("REQUEST");
        h.send(h.header(port, req.header.src_port, Op::Response), &[])
            .expect("RESPONSE");
        read_ok(&mut c);
        held.push(c);
    }
    let mut third = client(&h);
    // The device may close it before the line is written (it is refused at accept).
    let _ = third.write_all(b"CONNECT 3\n");
    assert!(closed(&mut third), "refused at the limit");
    // The guest cannot open one either.
    let _l = std::os::unix::net::UnixListener::bind(h.port_path(9)).expect("bind");
    h.send(h.header(70000, 9, Op::Request), &[])
        .expect("REQUEST");
    let p = h.recv(T).expect("RST");
    assert_eq!(p.header.operation(), Some(Op::Rst));
    assert_eq!(VsockMetrics::get(&h.metrics.connection_limit), 2);
    // Closing one frees a slot.
    drop(held.pop());
    let shut = h.recv_skip_credit(T).expect("SHUTDOWN");
    assert_eq!(shut.header.operation(), Some(Op::Shutdown));
    h.send(h.header(2, shut.header.src_port, Op::Rst), &[])
        .expect("RST");
    let m = h.metrics.clone();
    wait_for("the slot to free", || {
        VsockMetrics::get(&m.connections_open) == 1
    });
    let mut fourth = client(&h);
    fourth.write_all(b"CONNECT 4\n").expect("write");
    let req = h.recv(T).expect("REQUEST");
    assert_eq!(req.header.dst_port, 4);
}
