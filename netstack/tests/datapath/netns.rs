//! Destinations other than the gateway, simulated with TEST-NET addresses inside a network
//! namespace this test creates (design §8). The test thread joins the namespace with
//! setns(2), so the netstack's host sockets live there; nothing leaves the machine.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netstack::testkit::Harness;
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, IpEndpoint, Ipv4Address};

use crate::common::{cfg, tcp_socket, wait_established};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Deletes the namespace name when dropped (the thread's reference keeps it alive).
pub struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Creates a namespace with 192.0.2.1/24 on its loopback and moves this thread into it.
/// `ping_sockets` opens net.ipv4.ping_group_range inside it (it is per namespace).
pub fn enter_netns(ping_sockets: bool) -> Option<Netns> {
    let name = format!(
        "rf-netstack-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    if !ip(&["netns", "add", &name]) {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("SKIPPED: cannot create a network namespace (need root and iproute2)\n"),
        ); // uncaptured, so CI logs show it
        return None;
    }
    let ns = Netns(name.clone());
    let ok = ip(&["-n", &name, "link", "set", "lo", "up"])
        && ip(&["-n", &name, "addr", "add", "192.0.2.1/24", "dev", "lo"]);
    assert!(ok, "configuring netns {name} failed");
    if ping_sockets {
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "sysctl",
                "-qw",
                "net.ipv4.ping_group_range=0 2147483647",
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
    // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns failed: {}", std::io::Error::last_os_error());
    Some(ns)
}

fn ping(h: &mut Harness, dst: Ipv4Address) -> bool {
    let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
    let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
    let s = h.sockets.add(icmp::Socket::new(rx, tx));
    h.sockets
        .get_mut::<icmp::Socket>(s)
        .bind(icmp::Endpoint::Ident(0x77))
        .unwrap();
    let req = Icmpv4Repr::EchoRequest {
        ident: 0x77,
        seq_no: 3,
        data: b"test-net",
    };
    let buf = h
        .sockets
        .get_mut::<icmp::Socket>(s)
        .send(req.buffer_len(), IpAddress::Ipv4(dst))
        .unwrap();
    req.emit(&mut Icmpv4Packet::new_unchecked(buf), &Default::default());
    let mut ok = false;
    h.run_until(10_000, Duration::from_secs(5), |h| {
        let sock = h.sockets.get_mut::<icmp::Socket>(s);
        if let Ok((data, from)) = sock.recv() {
            let pkt = Icmpv4Packet::new_checked(data).unwrap();
            if let Ok(Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            }) = Icmpv4Repr::parse(&pkt, &Default::default())
            {
                ok = ident == 0x77
                    && seq_no == 3
                    && data == b"test-net"
                    && from == IpAddress::Ipv4(dst);
            }
        }
        ok
    });
    ok
}

#[test]
fn ping_test_net_host_through_ping_sockets() {
    let Some(_ns) = enter_netns(true) else { return };
    let mut h = Harness::new(cfg());
    assert!(
        ping(&mut h, Ipv4Address::new(192, 0, 2, 1)),
        "metrics {:?}",
        h.ns.metrics()
    );
    assert_eq!(h.ns.metrics().drop_icmp_no_socket, 0);
}

#[test]
fn ping_test_net_host_through_raw_fallback() {
    let Some(_ns) = enter_netns(false) else {
        return;
    };
    let mut h = Harness::new(cfg());
    assert!(
        ping(&mut h, Ipv4Address::new(192, 0, 2, 1)),
        "metrics {:?}",
        h.ns.metrics()
    );
}

#[test]
fn tcp_to_test_net_server() {
    let Some(_ns) = enter_netns(false) else {
        return;
    };
    let l = TcpListener::bind("192.0.2.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, peer) = l.accept().unwrap();
        c.write_all(b"public hello").unwrap();
        let mut b = Vec::new();
        c.read_to_end(&mut b).unwrap();
        (peer, b)
    });
    let mut h = Harness::new(cfg());
    let s = tcp_socket(&mut h, 4096);
    let cx = h.iface.context();
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .connect(
            cx,
            IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::new(192, 0, 2, 1)), port),
            46000,
        )
        .unwrap();
    assert!(wait_established(&mut h, s));
    let mut got = Vec::new();
    h.run_until(10_000, Duration::from_secs(5), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut b = [0u8; 32];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        got.len() == 12
    });
    assert_eq!(got, b"public hello");
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .send_slice(b"bye")
        .unwrap();
    h.sockets.get_mut::<tcp::Socket>(s).close();
    h.run_until(10_000, Duration::from_secs(5), |h| h.ns.flow_count() == 0);
    let (_peer, b) = server.join().unwrap();
    assert_eq!(b, b"bye");
}
