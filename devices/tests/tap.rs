//! The tap backend against the real kernel, inside a network namespace this test creates:
//! the harness guest ARPs for the namespace's address and pings it through the real device.
//! Skips (printing `SKIPPED:`) without root, /dev/net/tun or the `ip` tool.

use std::process::Command;
use std::time::{Duration, Instant};

use devices::net::backend::tap::{TapBackend, TapError};
use devices::net::header::VirtioNetHdr;
use devices::net::{Net, NetConfig};
use devices::testing::NetDriver;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
const GUEST_IP: [u8; 4] = [192, 0, 2, 2];
const HOST_IP: [u8; 4] = [192, 0, 2, 1];

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create a network namespace".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` tool (iproute2)".into());
    }
    None
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespace even if the test fails.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

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
    f.extend(HOST_IP);
    f
}

fn icmp_echo(dst_mac: [u8; 6], payload: &[u8]) -> Vec<u8> {
    icmp_echo_seq(dst_mac, payload, 1)
}

fn icmp_echo_seq(dst_mac: [u8; 6], payload: &[u8], seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend(seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = 20 + icmp.len();
    let mut ipv4 = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        1,
        0,
        0,
    ];
    ipv4.extend(GUEST_IP);
    ipv4.extend(HOST_IP);
    let c = checksum(&ipv4);
    ipv4[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend(GUEST_MAC);
    f.extend([0x08, 0x00]);
    f.extend(ipv4);
    f.extend(icmp);
    f
}

/// Receives frames until `pred` matches one, reposting buffers; bounded in time.
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
    panic!("no matching frame from the kernel within 10 s");
}

#[test]
fn tap_exchanges_arp_and_icmp_with_the_kernel_in_a_netns() {
    if let Some(why) = skip_reason() {
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED: {why}\n")); // uncaptured, so CI logs show it
        return;
    }
    let pid = std::process::id();
    let ns = Netns(format!("rf-devtap-{pid}"));
    ip(&["netns", "add", &ns.0]);
    let ifname = format!("rfdt{}", pid % 100_000);
    let tap = TapBackend::open(&ifname).expect("open tap");
    assert_eq!(tap.if_name(), ifname);

    // A second attach of the same non-multiqueue tap is refused with a clear error.
    match TapBackend::open(&ifname) {
        Err(e @ TapError::Busy { .. }) => assert!(e.to_string().contains(&ifname), "{e}"),
        other => panic!("expected Busy, got {other:?}"),
    }

    ip(&["link", "set", &ifname, "netns", &ns.0]);
    ip(&["-n", &ns.0, "addr", "add", "192.0.2.1/24", "dev", &ifname]);
    ip(&["-n", &ns.0, "link", "set", &ifname, "up"]);

    let net = Net::new(
        NetConfig {
            mac: GUEST_MAC,
            ..NetConfig::default()
        },
        Box::new(tap),
    )
    .expect("device");
    let metrics = net.metrics();
    let mut d = NetDriver::new(Box::new(net), u64::MAX).expect("driver");
    d.post_rx(64, 2048).expect("post rx");

    d.send(&VirtioNetHdr::default(), &arp_request())
        .expect("send arp");
    let reply = recv_until(&mut d, |f| {
        f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2]
    });
    assert_eq!(&reply[0..6], &GUEST_MAC, "ARP reply addressed to the guest");
    assert_eq!(&reply[28..32], &HOST_IP, "sender is the namespace address");
    assert_eq!(&reply[38..42], &GUEST_IP);
    let host_mac: [u8; 6] = reply[22..28].try_into().expect("mac");

    let payload: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    d.send(&VirtioNetHdr::default(), &icmp_echo(host_mac, &payload))
        .expect("send ping");
    let echo = recv_until(&mut d, |f| {
        f.len() > 42 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 0
    });
    assert_eq!(&echo[26..30], &HOST_IP);
    assert_eq!(&echo[42..], &payload[..], "echo reply carries our payload");

    // A burst of 100 pings goes out through the ring in few batches; every one is answered.
    for seq in 100..200u16 {
        d.send(
            &VirtioNetHdr::default(),
            &icmp_echo_seq(host_mac, &payload[..32], seq),
        )
        .expect("send burst");
    }
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 100 && Instant::now() < deadline {
        if let Ok(frames) = d.recv_frames(1, Duration::from_millis(200)) {
            for (_, f) in frames {
                if f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 0 {
                    seen.insert(u16::from_be_bytes([f[40], f[41]]));
                }
            }
        }
        if d.rx.free_descriptors() > 64 {
            d.post_rx(32, 2048).expect("repost");
        }
        d.take_used(devices::net::TX_QUEUE);
    }
    assert_eq!(seen.len(), 100, "echo replies for the whole burst");
    assert!(metrics.tx_frames.load(std::sync::atomic::Ordering::Relaxed) >= 102);
    assert!(metrics.rx_frames.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(metrics.tx_malformed.total(), 0);
    d.transport().shutdown();
}

#[test]
fn tap_errors_name_the_interface() {
    let e = TapBackend::open("this-name-is-far-too-long").unwrap_err();
    assert!(e.to_string().contains("this-name-is-far-too-long"), "{e}");
    assert!(TapBackend::open("").is_err());
}
