//! End-to-end on KVM: the probe guest on the default `--net user` backend (the userspace
//! netstack): DHCP, the gateway answering ping, 1 GiB each way to a host server on 127.0.0.1
//! via the host alias, UDP echo, IPv6 to the host's ::1, a published port into the guest, the
//! policy refusing the host unless allowed, and clear errors for bad settings.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GIB: u64 = 1 << 30;

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

#[test]
fn dhcp_lease_and_the_gateway_answers_ping() {
    let probe = require!(kvm_and_probe());
    let o = run_user(
        &probe,
        &[],
        &[
            "probe.scenario=ping",
            "probe.peer=172.16.0.1",
            "probe.count=5",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["addr_method"], "dhcp");
    assert_eq!(j["ip"], "172.16.0.2/30");
    assert_eq!(j["gw"], "172.16.0.1");
    assert_eq!(j["received"], 5);
    // virtio VIRTIO_NET_F_MTU and DHCP option 26 both carry the default link MTU.
    assert_eq!(j["mtu"], 65520, "{j}");
}

/// VMs run back to back can publish the same host port: the first closes its listener
/// before its process ends (the io_uring polls holding it are cancelled at stop). Before,
/// about 1 in 10 runs failed with "Address already in use".
#[test]
fn back_to_back_vms_publish_the_same_port() {
    let probe = require!(kvm_and_probe());
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    for run in 0..20 {
        let o = run_user(
            &probe,
            &["-p", &publish],
            &[
                "probe.scenario=ping",
                "probe.peer=172.16.0.1",
                "probe.count=1",
            ],
        );
        assert_exit_ok(&o, &format!("run {run}"));
    }
}

/// `--mtu` reaches the guest (virtio config space and DHCP agree on it).
#[test]
fn mtu_flag_sets_the_guest_link_mtu() {
    let probe = require!(kvm_and_probe());
    let o = run_user(
        &probe,
        &["--mtu", "1500"],
        &[
            "probe.scenario=ping",
            "probe.peer=172.16.0.1",
            "probe.count=1",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["mtu"], 1500, "{j}");
    assert_eq!(j["received"], 1, "{j}");
}

#[test]
fn one_gib_to_the_host_via_the_alias_arrives_intact() {
    let probe = require!(kvm_and_probe());
    let (peer, addr) = host_peer(&["sink", "127.0.0.1:0", "--timeout", "240"]);
    let o = run_user(
        &probe,
        &["--net-rule", "allow@host"],
        &[
            "probe.scenario=tcp-send",
            &format!("probe.peer=host.ringfence.internal:{}", addr.port()),
            &format!("probe.bytes={GIB}"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let r = peer_result(peer);
    assert_eq!(r["bytes"], GIB, "{r}");
    assert_eq!(r["pattern_ok"], true, "{r}");
}

/// The probe downloads `bytes` of the pattern from a host server on 127.0.0.1 through the
/// gateway; returns ringfence's output and the guest's result once the server sent them all.
fn download(
    probe: &std::path::Path,
    bytes: u64,
    flags: &[&str],
    words: &[&str],
) -> (Output, serde_json::Value) {
    let (peer, addr) = host_peer(&[
        "source",
        "127.0.0.1:0",
        &bytes.to_string(),
        "--timeout",
        "240",
    ]);
    let peer_word = format!("probe.peer=172.16.0.1:{}", addr.port());
    let mut all_words = vec!["probe.scenario=tcp-recv", peer_word.as_str()];
    all_words.extend_from_slice(words);
    let mut all_flags = vec!["--net-rule", "allow@host"];
    all_flags.extend_from_slice(flags);
    let o = run_user(probe, &all_flags, &all_words);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["bytes"], bytes, "{j}");
    assert_eq!(peer_result(peer)["bytes"], bytes);
    (o, j)
}

#[test]
fn one_gib_from_the_host_arrives_intact() {
    let probe = require!(kvm_and_probe());
    let (o, j) = download(&probe, GIB, &["--net-stats"], &[]);
    assert_eq!(j["sha256"], pattern_sha256(GIB).as_str());
    // The device's own account (--net-stats) agrees: every byte went into guest buffers
    // (plus headers), nothing was cut or dropped on the way.
    let stats = net_stats(&o);
    assert!(stats["rx_bytes"].as_u64().unwrap_or(0) > GIB, "{stats}");
    // The netstack's counters come along (payload bytes, retransmissions included).
    assert!(
        stats["netstack_bytes_host_to_guest"].as_u64().unwrap_or(0) >= GIB,
        "{stats}"
    );
    for counter in [
        "rx_truncated",
        "rx_dropped_no_buffer",
        "rx_malformed",
        "tx_malformed",
        "netstack_drop_malformed",
    ] {
        assert_eq!(stats[counter], 0, "{counter}: {stats}");
    }
}

/// The benchmark's check mode: the guest compares every byte with the pattern instead of
/// hashing (`probe.verify=pattern`), and says so.
#[test]
fn a_download_checked_against_the_pattern_reports_it_intact() {
    let probe = require!(kvm_and_probe());
    let (_, j) = download(&probe, 64 << 20, &[], &["probe.verify=pattern"]);
    assert_eq!(j["pattern_ok"], true, "{j}");
}

/// The JSON object of the `ringfence: net stats:` line on stderr.
fn net_stats(o: &Output) -> serde_json::Value {
    let err = stderr(o);
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("ringfence: net stats: "))
        .unwrap_or_else(|| panic!("no net stats line in stderr:\n{err}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("net stats {line:?}: {e}"))
}

#[test]
fn four_parallel_flows_each_way_arrive_intact() {
    let probe = require!(kvm_and_probe());
    let bytes: u64 = 32 << 20;
    let (peer, addr) = host_peer(&[
        "sink",
        "127.0.0.1:0",
        "--conns",
        "4",
        "--parallel",
        "--timeout",
        "120",
    ]);
    let o = run_user(
        &probe,
        &["--net-rule", "allow@host"],
        &[
            "probe.scenario=tcp-send",
            &format!("probe.peer=172.16.0.1:{}", addr.port()),
            &format!("probe.bytes={bytes}"),
            "probe.flows=4",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(result_json(&o)["flows"], 4);
    let r = peer_result(peer);
    assert_eq!(
        (r["bytes"].as_u64(), r["pattern_ok"].as_bool()),
        (Some(bytes), Some(true)),
        "{r}"
    );

    let (peer, addr) = host_peer(&[
        "source",
        "127.0.0.1:0",
        &bytes.to_string(),
        "--conns",
        "4",
        "--parallel",
        "--timeout",
        "120",
    ]);
    let o = run_user(
        &probe,
        &["--net-rule", "allow@host"],
        &[
            "probe.scenario=tcp-recv",
            &format!("probe.peer=172.16.0.1:{}", addr.port()),
            "probe.flows=4",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(
        (j["bytes"].as_u64(), j["pattern_ok"].as_bool()),
        (Some(bytes), Some(true)),
        "{j}"
    );
    assert_eq!(peer_result(peer)["bytes"], bytes);
}

#[test]
fn udp_echo_through_the_netstack() {
    let probe = require!(kvm_and_probe());
    // 50 counted datagrams plus the probe's warm-up one.
    let (peer, addr) = host_peer(&["udp-echo", "127.0.0.1:0", "--timeout", "20", "--max", "51"]);
    let o = run_user(
        &probe,
        &["--net-rule", "allow@host"],
        &[
            "probe.scenario=udp-echo",
            &format!("probe.peer=172.16.0.1:{}", addr.port()),
            "probe.count=50",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["received"], 50, "{j}");
    assert_eq!(peer_result(peer)["datagrams"], 51);
}

#[test]
fn ipv6_reaches_the_hosts_loopback_through_the_gateway() {
    let probe = require!(kvm_and_probe());
    let (peer, addr) = host_peer(&["sink", "[::1]:0", "--timeout", "60"]);
    let o = run_user(
        &probe,
        &["--net-rule", "allow@host"],
        &[
            "probe.ip=fd42:6d73:62::2/64",
            "probe.gw=fd42:6d73:62::1",
            "probe.scenario=tcp-send",
            &format!("probe.peer=[fd42:6d73:62::1]:{}", addr.port()),
            "probe.bytes=4194304",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let r = peer_result(peer);
    assert_eq!(r["bytes"], 4_194_304u64, "{r}");
    assert_eq!(r["pattern_ok"], true);
}

#[test]
fn a_published_port_reaches_a_server_in_the_guest() {
    let probe = require!(kvm_and_probe());
    let host_port = free_port();
    let mut vm = Command::new(ringfence_bin())
        .args(["run", "--kernel"])
        .arg(&probe)
        .args([
            "--net",
            "user",
            "--timeout",
            "60",
            "-p",
            &format!("{host_port}:8080"),
        ])
        .args([
            "--",
            "probe.scenario=serve",
            "probe.port=8080",
            "probe.conns=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = vm.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("probe: listening") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "guest never listened"
        );
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "stdout closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let mut c =
        TcpStream::connect(("127.0.0.1", host_port)).expect("connect to the published port");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&msg).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, msg, "the guest echoes what it got");
    let status = vm.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("\"conns\":1"), "{rest}");
}

#[test]
fn the_default_policy_refuses_the_host_and_says_why() {
    let probe = require!(kvm_and_probe());
    let (mut peer, addr) = host_peer(&["sink", "127.0.0.1:0", "--timeout", "10"]);
    let o = run_user(
        &probe,
        &[],
        &[
            "probe.scenario=connect",
            &format!("probe.peer=172.16.0.1:{}", addr.port()),
        ],
    );
    let _ = peer.kill();
    let _ = peer.wait();
    assert_eq!(
        o.status.code(),
        Some(1),
        "refused: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let err = stderr(&o);
    assert!(
        err.contains("policy denied") && err.contains("172.16.0.1"),
        "{err}"
    );
}

#[test]
fn bad_user_network_settings_fail_before_boot() {
    let probe = require!(kvm_and_probe());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["-p", &format!("{port}:80")], 125, &format!("{port}")),
        (&["-p", "80"], 2, "bad -p \"80\""),
        (&["--ipv4-pool", "10.0.0.1/8"], 2, "host bits are set"),
        (&["--mtu", "100"], 2, "bad --mtu \"100\""),
        (
            &["--net-rule", "allow@*:tcp:9000-80"],
            125,
            "--net-rule allow@*:tcp:9000-80",
        ),
        (&["--net-preset", "open"], 125, "unknown preset"),
    ];
    for (flags, code, needle) in cases {
        let o = run_user(&probe, flags, &["probe.scenario=hello"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(*code), "{flags:?}: {err}");
        assert!(
            err.contains(needle),
            "{flags:?}: expected {needle:?} in {err:?}"
        );
        assert!(
            !stdout(&o).contains("probe: ready"),
            "{flags:?} must fail before boot"
        );
    }
    drop(taken);
    let o = Command::new(ringfence_bin())
        .args(["run", "--kernel"])
        .arg(&probe)
        .args(["--net", "none", "-p", "8080:80"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("need --net user"), "{}", stderr(&o));
}

#[test]
fn pcap_snaplen_keeps_the_first_bytes_of_every_frame() {
    let probe = require!(kvm_and_probe());
    let path = std::env::temp_dir().join(format!("ringfence-snaplen-{}.pcap", std::process::id()));
    let o = run_user(
        &probe,
        &[
            "--pcap",
            path.to_str().expect("utf-8 temp path"),
            "--pcap-snaplen",
            "64",
        ],
        &[
            "probe.scenario=resolve",
            "probe.name=host.ringfence.internal",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let bytes = std::fs::read(&path).expect("pcap written");
    let (snaplen, records) = pcap_records(&bytes);
    assert_eq!(snaplen, 64);
    assert!(records.iter().all(|(incl, _)| *incl <= 64));
    let frames = records.len();
    let cut = records.iter().filter(|(_, orig)| *orig > 64).count();
    // DHCP discover/offer/request/ack, the DNS query and its answer at least.
    assert!(frames >= 6 && cut >= 4, "{frames} frames, {cut} cut");
    let _ = std::fs::remove_file(&path);
}
