//! The `user` backend end to end through the real device: the harness guest ARPs for the
//! gateway and exchanges a UDP datagram with a host socket on loopback (the gateway address
//! maps to host loopback), so host socket readiness travels through the io_uring loop.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use devices::net::backend::user::UserBackend;
use devices::net::header::VirtioNetHdr;
use devices::net::{Net, NetConfig};
use devices::testing::NetDriver;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
const GUEST_IP: [u8; 4] = [172, 16, 0, 2];
const GATEWAY_IP: [u8; 4] = [172, 16, 0, 1];

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(GUEST_MAC);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(GUEST_MAC);
    f.extend(GUEST_IP);
    f.extend([0; 6]);
    f.extend(GATEWAY_IP);
    f
}

fn udp_frame(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut udp = Vec::with_capacity(ulen);
    udp.extend(sport.to_be_bytes());
    udp.extend(dport.to_be_bytes());
    udp.extend((ulen as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend(GUEST_IP);
    pseudo.extend(GATEWAY_IP);
    pseudo.extend([0, 17]);
    pseudo.extend((ulen as u16).to_be_bytes());
    pseudo.extend(&udp);
    let c = checksum(&pseudo);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let total = 20 + ulen;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend(GUEST_IP);
    ip.extend(GATEWAY_IP);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = GATEWAY_MAC.to_vec();
    f.extend(GUEST_MAC);
    f.extend([0x08, 0x00]);
    f.extend(ip);
    f.extend(udp);
    f
}

fn recv_until(d: &mut NetDriver, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(frames) = d.recv_frames(1, Duration::from_millis(200)) {
            if d.rx.free_descriptors() > 64 {
                d.post_rx(32, 2048).expect("repost");
            }
            for (_, f) in frames {
                if pred(&f) {
                    return f;
                }
            }
        }
    }
    panic!("no matching frame from the netstack within 10 s");
}

#[test]
fn user_backend_answers_arp_and_relays_udp_to_host_loopback() {
    let stack = netstack::Netstack::new(netstack::NetConfig {
        dns_upstreams: vec!["127.0.0.1:53".parse().expect("addr")],
        ..netstack::NetConfig::default()
    })
    .expect("netstack");
    let net = Net::new(NetConfig::default(), Box::new(UserBackend::new(stack))).expect("device");
    let metrics = net.metrics();
    let mut d = NetDriver::new(Box::new(net), u64::MAX).expect("driver");
    d.post_rx(64, 2048).expect("post rx");

    d.send(&VirtioNetHdr::default(), &arp_request())
        .expect("send arp");
    let reply = recv_until(&mut d, |f| {
        f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2]
    });
    assert_eq!(&reply[22..28], &GATEWAY_MAC);
    assert_eq!(&reply[28..32], &GATEWAY_IP);

    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind");
    echo.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let port = echo.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let (n, from) = echo
            .recv_from(&mut buf)
            .expect("datagram from the netstack");
        echo.send_to(&buf[..n], from).expect("echo");
        buf[..n].to_vec()
    });

    let payload = b"hello through ringfence";
    d.send(&VirtioNetHdr::default(), &udp_frame(40000, port, payload))
        .expect("send udp");
    let got = recv_until(&mut d, |f| {
        f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 17 && f[36..38] == 40000u16.to_be_bytes()
    });
    assert_eq!(server.join().expect("server"), payload);
    assert_eq!(
        &got[26..30],
        &GATEWAY_IP,
        "reply appears to come from the gateway"
    );
    assert_eq!(&got[34..36], &port.to_be_bytes());
    assert_eq!(&got[42..], payload);
    assert!(metrics.rx_frames.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    d.transport().shutdown();
}
