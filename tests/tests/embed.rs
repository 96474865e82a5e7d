//! End-to-end: ringfence as a library (`ringfence::Vm::start` and the `VmHandle`), several VMs
//! in one test process, the probe guest on KVM. Life cycle first (wait, try_wait, kill, drop
//! frees every thread and fd), then the network handles.
//!
//! The tests of this file run one at a time (see [`serial`]): the leak check counts the
//! process's threads and fds, which any other VM running alongside would change.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::embedded::*;
use common::*;
use ringfence::embed::{NetHandleError, Proto};
use ringfence::net::NetBackendSpec;
use ringfence::{Vm, VmExit, VmHandle};

/// Spin iterations that keep the probe busy for well over a minute (1e8 take ~0.07 s here).
const LONG_SPIN: &str = "probe.scenario=spin:1000000000000";
fn start(probe: &Path, words: &str) -> (VmHandle, Captured) {
    let out = Captured::default();
    let vm = Vm::new(probe_config(probe, words, out.clone()))
        .start()
        .expect("start the probe VM");
    (vm, out)
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn two_vms_in_one_process_exit_and_are_killed_independently() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let (spinner, _) = start(&probe, LONG_SPIN);
    let (exiter, out) = start(&probe, "probe.scenario=exit:5");
    assert_eq!(
        wait(&exiter),
        VmExit::GuestStatus(5),
        "console: {}",
        out.text()
    );
    assert_eq!(exiter.exit_status(), Some(5));
    assert_eq!(exiter.try_wait().and_then(|e| e.guest_status()), Some(5));
    assert!(
        spinner.try_wait().is_none(),
        "the spinning VM runs on after the other one exited"
    );
    assert!(spinner.is_running());
    spinner.kill();
    assert_eq!(wait(&spinner), VmExit::Killed);
    spinner.kill(); // idempotent
    assert_eq!(spinner.try_wait(), Some(VmExit::Killed));
    assert_eq!(
        spinner.wait(),
        VmExit::Killed,
        "wait after the end returns at once"
    );
}

#[test]
fn try_wait_is_none_while_running_then_the_exit() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let (vm, _) = start(&probe, LONG_SPIN);
    assert_eq!(vm.try_wait(), None);
    assert_eq!(vm.wait_timeout(Duration::from_millis(50)), None);
    vm.kill();
    assert_eq!(wait(&vm), VmExit::Killed);
    assert_eq!(vm.try_wait(), Some(VmExit::Killed));
}

#[test]
fn a_handle_waited_on_by_one_thread_is_killed_from_another() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let (vm, _) = start(&probe, LONG_SPIN);
    let vm = Arc::new(vm);
    let waiter = {
        let vm = vm.clone();
        std::thread::spawn(move || wait(&vm))
    };
    vm.kill();
    assert_eq!(waiter.join().expect("waiter thread"), VmExit::Killed);
}

#[test]
fn run_still_returns_the_guest_status() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let out = Captured::default();
    let exit = Vm::new(probe_config(&probe, "probe.scenario=exit:3", out.clone()))
        .run()
        .expect("run");
    assert_eq!(exit, VmExit::GuestStatus(3), "console: {}", out.text());
    assert!(out.text().contains("probe: ready"), "{}", out.text());
}

#[test]
fn dropping_handles_frees_every_thread_and_fd() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    // One warm-up cycle: process-wide one-time set-up (signal handler, lazily opened files of
    // the runtime) is not a leak.
    drop(start(&probe, LONG_SPIN));
    let tasks_before = count_dir("/proc/self/task");
    let fds_before = count_dir("/proc/self/fd");
    for i in 0..20 {
        if i % 4 == 3 {
            // A user network with its device thread running and a live flow into the guest.
            let out = Captured::default();
            let vm = user_net_vm(&probe, "probe.scenario=serve probe.port=80", out.clone())
                .start()
                .expect("start");
            wait_for_console(&vm, &out, "probe: listening");
            let conn = vm.dial_guest(Proto::Tcp, 80).expect("dial_guest");
            let listener = vm.listen(Proto::Tcp, 7000).expect("listen");
            drop(vm);
            drop((conn, listener));
            continue;
        }
        let (vm, _) = start(
            &probe,
            if i % 2 == 0 {
                LONG_SPIN
            } else {
                "probe.scenario=exit:0"
            },
        );
        if i % 4 == 1 {
            assert_eq!(wait(&vm), VmExit::GuestStatus(0));
        }
        drop(vm);
    }
    let tasks_after = count_dir("/proc/self/task");
    let fds_after = count_dir("/proc/self/fd");
    eprintln!(
        "leak check over 20 cycles: tasks {tasks_before} -> {tasks_after}, fds {fds_before} -> {fds_after}"
    );
    assert_eq!(tasks_after, tasks_before, "threads left behind");
    assert_eq!(fds_after, fds_before, "fds left open");
}

#[test]
fn a_second_vm_cannot_take_the_stop_signals() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let first = Vm::new(probe_config(&probe, LONG_SPIN, Captured::default()))
        .route_stop_signals()
        .start()
        .expect("first VM");
    let second = Vm::new(probe_config(&probe, LONG_SPIN, Captured::default()))
        .route_stop_signals()
        .start();
    let err = second
        .expect_err("only one VM may route stop signals")
        .to_string();
    assert!(err.contains("stop signals"), "{err}");
    drop(first);
    // Released with the first VM: a new one may take them.
    let third = Vm::new(probe_config(
        &probe,
        "probe.scenario=exit:0",
        Captured::default(),
    ))
    .route_stop_signals()
    .start()
    .expect("stop signals are free again");
    assert_eq!(wait(&third), VmExit::GuestStatus(0));
}

#[test]
fn dial_guest_reaches_a_guest_service_without_a_host_port() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let out = Captured::default();
    let vm = user_net_vm(&probe, "probe.scenario=serve probe.port=8080", out.clone())
        .start()
        .expect("start");
    wait_for_console(&vm, &out, "probe: listening");
    let mut conn = vm.dial_guest(Proto::Tcp, 8080).expect("dial_guest");
    conn.set_read_timeout(Some(WAIT_LIMIT)).expect("timeout");
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = conn.try_clone().expect("clone");
        let sent = sent.clone();
        std::thread::spawn(move || {
            w.write_all(&sent).expect("write to the guest");
            w.shutdown(std::net::Shutdown::Write).expect("shutdown");
        })
    };
    let mut echoed = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut echoed).expect("read the echo");
    writer.join().expect("writer");
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "the echo differs from what was sent");
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
}

#[test]
fn listen_serves_the_guest_at_the_host_name_under_the_default_policy() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let out = Captured::default();
    let mut vm = user_net_vm(
        &probe,
        "probe.scenario=tcp-send probe.peer=host.ringfence.internal:7000 probe.bytes=4M",
        out.clone(),
    );
    let listener = vm.listen(Proto::Tcp, 7000).expect("listen before start");
    let vm = vm.start().expect("start");
    let mut conn = listener
        .accept_timeout(WAIT_LIMIT)
        .expect("accept")
        .expect("the guest connects");
    conn.set_read_timeout(Some(WAIT_LIMIT)).expect("timeout");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut got).expect("read the upload");
    assert_eq!(got.len(), 4 << 20);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "the upload follows the probe's pattern"
    );
    drop(conn);
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
}

#[test]
fn network_handles_explain_what_is_wrong() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    // No user network.
    let (plain, _) = start(&probe, LONG_SPIN);
    let e = plain.listen(Proto::Tcp, 80).expect_err("no user net");
    assert!(matches!(e, NetHandleError::NoUserNet), "{e}");
    assert!(e.to_string().contains("--net user"), "{e}");
    drop(plain);

    let vm = user_net_vm(&probe, LONG_SPIN, Captured::default())
        .start()
        .expect("start");
    let e = vm.listen(Proto::Tcp, 0).expect_err("port 0");
    assert!(e.to_string().contains("1-65535"), "{e}");
    assert!(matches!(
        vm.dial_guest(Proto::Tcp, 0),
        Err(NetHandleError::PortZero)
    ));
    assert!(matches!(
        vm.listen(Proto::Udp, 53),
        Err(NetHandleError::Unsupported { .. })
    ));
    let first = vm.listen(Proto::Tcp, 9000).expect("first listen");
    let e = vm.listen(Proto::Tcp, 9000).expect_err("second listen");
    assert!(matches!(e, NetHandleError::PortTaken { port: 9000 }), "{e}");
    drop(first);
    let again = vm.listen(Proto::Tcp, 9000).expect("free again after drop");

    vm.kill();
    assert_eq!(wait(&vm), VmExit::Killed);
    assert!(matches!(
        vm.dial_guest(Proto::Tcp, 80),
        Err(NetHandleError::Stopped)
    ));
    assert!(matches!(
        vm.listen(Proto::Tcp, 81),
        Err(NetHandleError::Stopped)
    ));
    assert!(matches!(again.accept(), Err(NetHandleError::Stopped)));
    let e = vm
        .net_control()
        .set_network_enabled(false)
        .expect_err("a stopped VM");
    assert!(e.to_string().contains("stopped"), "{e}");
}

#[test]
fn capture_at_run_time_keeps_the_snap_length_and_counts_frames() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let out = Captured::default();
    let mut vm = user_net_vm(
        &probe,
        "probe.scenario=tcp-send probe.peer=host.ringfence.internal:7000 probe.bytes=8M",
        out.clone(),
    );
    let listener = vm.listen(Proto::Tcp, 7000).expect("listen");
    let vm = vm.start().expect("start");
    let pcap = Captured::default();
    let mut capture = vm.capture(pcap.clone(), Some(128)).expect("capture");
    let e = vm
        .capture(std::io::sink(), None)
        .expect_err("one capture at a time");
    assert!(e.to_string().contains("already running"), "{e}");
    let mut conn = listener
        .accept_timeout(WAIT_LIMIT)
        .expect("accept")
        .expect("the guest connects");
    conn.set_read_timeout(Some(WAIT_LIMIT)).expect("timeout");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut got).expect("read the upload");
    assert_eq!(got.len(), 8 << 20);
    drop(conn);
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    let dropped = capture.stop();
    let bytes = pcap.bytes();
    let (snaplen, records) = pcap_records(&bytes);
    assert_eq!(snaplen, 128);
    assert!(!records.is_empty());
    assert!(records
        .iter()
        .all(|(incl, orig)| incl <= &128 && incl <= orig));
    let payload: u64 = records.iter().map(|(_, orig)| u64::from(*orig)).sum();
    eprintln!(
        "capture: {} frames written, {dropped} dropped, {payload} bytes on the wire",
        records.len()
    );
    assert_eq!(records.len() as u64, capture.written());
    assert_eq!(capture.write_errors(), 0);
    // Every frame of the upload was either written or counted.
    assert!(
        payload + dropped * 65_536 >= 8 << 20,
        "the upload's frames are accounted for"
    );
    // A stopped VM has nothing to capture.
    assert!(matches!(
        vm.capture(std::io::sink(), None),
        Err(NetHandleError::Stopped)
    ));
}

#[test]
fn expose_carries_host_connections_into_the_guest() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let out = Captured::default();
    let vm = user_net_vm(&probe, "probe.scenario=serve probe.port=8080", out.clone())
        .start()
        .expect("start");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let exposed = vm.expose(Proto::Tcp, 8080, listener).expect("expose");
    wait_for_console(&vm, &out, "probe: listening");
    let mut conn = std::net::TcpStream::connect(exposed.local_addr()).expect("connect");
    conn.set_read_timeout(Some(WAIT_LIMIT)).expect("timeout");
    conn.write_all(b"through the host listener").expect("write");
    conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut echoed = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut echoed).expect("read the echo");
    assert_eq!(echoed, b"through the host listener");
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    drop(exposed);
}

#[test]
fn dial_out_is_judged_by_the_guest_policy() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = target.local_addr().expect("addr");
    for allow in [false, true] {
        let out = Captured::default();
        let mut config = probe_config(&probe, "probe.scenario=serve probe.port=80", out.clone());
        config.net.backend = NetBackendSpec::User;
        if allow {
            config.net.user.policy.rules = vec![format!("allow@loopback:tcp:{}", addr.port())];
        }
        let vm = Vm::new(config).start().expect("start");
        // The policy lives on the device thread, which runs once the guest set it up.
        wait_for_console(&vm, &out, "probe: listening");
        let r = vm.dial_out(Proto::Tcp, addr);
        if allow {
            let mut s = r.expect("allowed by the rule");
            s.write_all(b"x").expect("write");
            let (mut accepted, _) = target.accept().expect("accept");
            let mut b = [0u8; 1];
            std::io::Read::read_exact(&mut accepted, &mut b).expect("read");
            assert_eq!(&b, b"x");
        } else {
            let e = r.expect_err("loopback is denied by default");
            assert!(matches!(e, NetHandleError::Denied { .. }), "{e}");
            assert!(e.to_string().contains("allow@127.0.0.1"), "{e}");
        }
        vm.kill();
        assert_eq!(wait(&vm), VmExit::Killed);
        assert!(matches!(
            vm.dial_out(Proto::Tcp, addr),
            Err(NetHandleError::Stopped)
        ));
    }
}

#[test]
fn an_idle_guest_halts_without_being_reported_dead() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let (vm, out) = start(&probe, "probe.scenario=idle");
    wait_for_console(&vm, &out, "probe: idle");
    // The supervisor checks a halted vCPU every 500 ms: a halt with interrupts enabled must
    // not be mistaken for a dead one.
    assert_eq!(vm.wait_timeout(Duration::from_millis(1500)), None);
    vm.kill();
    assert_eq!(wait(&vm), VmExit::Killed);
}

#[test]
fn listen_packet_answers_the_guests_datagrams() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let out = Captured::default();
    let mut vm = user_net_vm(
        &probe,
        "probe.scenario=udp-echo probe.peer=host.ringfence.internal:5300 probe.count=20",
        out.clone(),
    );
    let listener = vm.listen_packet(5300).expect("listen_packet before start");
    let e = vm
        .listen_packet(5300)
        .expect_err("one UDP listener per port");
    assert!(matches!(e, NetHandleError::PortTaken { port: 5300 }), "{e}");
    let vm = vm.start().expect("start");
    let flow = listener
        .accept_timeout(WAIT_LIMIT)
        .expect("accept")
        .expect("the guest sends");
    flow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let echo = std::thread::spawn(move || {
        let mut echoed = 0u32;
        let mut b = [0u8; 2048];
        // Bounded: the probe sends 20 datagrams plus one warm-up.
        for _ in 0..1000 {
            match flow.recv(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    flow.send(&b[..n]).expect("echo");
                    echoed += 1;
                }
            }
        }
        echoed
    });
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    let echoed = echo.join().expect("echo thread");
    assert!(echoed >= 20, "echoed {echoed}");
    let j = out.result_json();
    assert_eq!(j["received"], 20, "{j}");
}

#[test]
fn an_intercepting_vm_hands_its_ca_and_proxy_counters_to_the_embedder() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let out = Captured::default();
    let mut config = probe_config(&probe, "probe.scenario=exit:0", out.clone());
    config.net.backend = NetBackendSpec::User;
    config.net.user.tls_intercept = Some(ringfence::tls_intercept::InterceptSettings {
        no_verify_upstream: true,
        secrets: vec!["API_KEY=value@api.example.test".parse().expect("spec")],
        ..Default::default()
    });
    let vm = Vm::new(config).start().expect("start with interception");
    let pem = vm.tls_ca_pem().expect("the VM intercepts").to_string();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let stats = vm.tls_stats().expect("counters");
    assert!(stats.contains(&("tls_proxy_flows", 0)), "{stats:?}");
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    // A VM without interception has neither.
    let (plain, _) = start(&probe, "probe.scenario=exit:0");
    assert!(plain.tls_ca_pem().is_none() && plain.tls_stats().is_none());
    assert_eq!(wait(&plain), VmExit::GuestStatus(0));
}
