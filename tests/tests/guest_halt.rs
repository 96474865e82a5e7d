//! End-to-end on KVM: the probe's halting wait (`probe.wait=halt`). A guest whose polls find
//! nothing halts its vCPU until the virtio-net device interrupts (through the IOAPIC pin the
//! command line names, routed to its local APIC) or the next TCP timer is due, as a Linux
//! guest does; the data it moves is the same as when it spins. Also: a bad `probe.wait`
//! value is refused with a usage error.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use common::*;

/// The rule that lets the guest reach the host's loopback.
const ALLOW_HOST: [&str; 2] = ["--net-rule", "allow@host"];

/// The probe's byte pattern (`i % 251`), `len` bytes from offset 0.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_halting_guest_uploads_intact_and_says_it_halted() {
    let probe = require!(kvm_and_probe());
    let bytes: u64 = 64 << 20;
    let (peer, addr) = host_peer(&["sink", "127.0.0.1:0", "--timeout", "120"]);
    let o = run_user(
        &probe,
        &ALLOW_HOST,
        &[
            "probe.scenario=tcp-send",
            &format!("probe.peer=host.ringfence.internal:{}", addr.port()),
            &format!("probe.bytes={bytes}"),
            "probe.wait=halt",
            "probe.halt_after_us=0",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["wait"], "halt", "{j}");
    // DHCP and the handshake each wait for an answer: with no spin budget the guest halts
    // (or finds the answer already there while arming the interrupt).
    let waits = j["sleeps"].as_u64().unwrap_or(0) + j["sleeps_skipped"].as_u64().unwrap_or(0);
    assert!(waits > 0, "{j}");
    let r = peer_result(peer);
    assert_eq!(
        (r["bytes"].as_u64(), r["pattern_ok"].as_bool()),
        (Some(bytes), Some(true)),
        "{r}"
    );
}

/// The host server says nothing for half a second after the connection opens, then sends.
/// The guest has nothing to do meanwhile: it must halt (and be woken by the device's
/// interrupt once the data comes), and receive every byte.
#[test]
fn a_halting_guest_sleeps_through_a_quiet_peer_and_wakes_for_its_data() {
    let probe = require!(kvm_and_probe());
    let len = 4 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("the guest connects");
        thread::sleep(Duration::from_millis(500));
        conn.write_all(&pattern(len)).expect("send to the guest");
    });
    let o = run_user(
        &probe,
        &ALLOW_HOST,
        &[
            "probe.scenario=tcp-recv",
            &format!("probe.peer=host.ringfence.internal:{port}"),
            "probe.wait=halt",
        ],
    );
    server.join().expect("server thread");
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["wait"], "halt", "{j}");
    assert_eq!(j["bytes"], len as u64, "{j}");
    assert_eq!(j["sha256"], pattern_sha256(len as u64).as_str(), "{j}");
    assert!(j["sleeps"].as_u64().unwrap_or(0) > 0, "{j}");
}

#[test]
fn a_bad_wait_mode_is_a_usage_error_that_names_the_choices() {
    let probe = require!(kvm_and_probe());
    let o = run_user(
        &probe,
        &ALLOW_HOST,
        &[
            "probe.scenario=tcp-send",
            "probe.peer=host.ringfence.internal:9",
            "probe.bytes=1",
            "probe.wait=nap",
        ],
    );
    let j = result_json(&o);
    assert_eq!(j["ok"], false, "{j}");
    let err = j["error"].as_str().unwrap_or("");
    assert!(
        err.contains("probe.wait") && err.contains("halt") && err.contains("poll"),
        "{j}"
    );
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
}
