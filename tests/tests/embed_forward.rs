//! End-to-end: the embedding API's `forward` (guest connections to a `listen`ed port carried
//! to a host TCP server) and the async handles of the `tokio` feature, with the probe guest on
//! KVM. The tests of this file run one at a time ([`serial`]).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::embedded::*;
use common::*;
use ringfence::embed::{NetHandleError, Proto};
use ringfence::{Vm, VmExit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A current-thread runtime, the smallest an embedder may use.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn forward_carries_the_guests_upload_to_a_host_server() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let server = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = server.local_addr().expect("addr");
    let sink = std::thread::spawn(move || {
        let (mut s, _) = server.accept().expect("accept the forwarded connection");
        s.set_read_timeout(Some(WAIT_LIMIT)).expect("timeout");
        let mut got = Vec::new();
        // EOF only comes if the guest's close is passed on.
        s.read_to_end(&mut got).expect("read the upload");
        got
    });
    let out = Captured::default();
    let mut vm = user_net_vm(
        &probe,
        "probe.scenario=tcp-send probe.peer=host.ringfence.internal:7000 probe.bytes=4M",
        out.clone(),
    );
    let listener = vm.listen(Proto::Tcp, 7000).expect("listen before start");
    let vm = vm.start().expect("start");
    let forwarded = vm.forward(listener, addr).expect("forward");
    assert_eq!((forwarded.port(), forwarded.host_addr()), (7000, addr));
    let got = sink.join().expect("sink thread");
    assert_eq!(got.len(), 4 << 20);
    assert!(
        got == pattern(4 << 20),
        "the upload follows the probe's pattern"
    );
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    assert_eq!(forwarded.connections(), 1);
    assert_eq!(forwarded.connect_failures(), 0);
    assert_eq!(forwarded.bytes_to_host(), 4 << 20);
    drop(forwarded);
}

#[test]
fn forward_carries_the_host_servers_bytes_back_to_the_guest() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let server = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = server.local_addr().expect("addr");
    let source = std::thread::spawn(move || {
        let (mut s, _) = server.accept().expect("accept the forwarded connection");
        s.write_all(&pattern(2 << 20)).expect("send to the guest");
        // Closing ends the guest's read: tcp-recv reads to EOF.
    });
    let out = Captured::default();
    let mut vm = user_net_vm(
        &probe,
        "probe.scenario=tcp-recv probe.peer=host.ringfence.internal:7001",
        out.clone(),
    );
    let listener = vm.listen(Proto::Tcp, 7001).expect("listen before start");
    let vm = vm.start().expect("start");
    let forwarded = vm.forward(listener, addr).expect("forward");
    source.join().expect("source thread");
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    let j = out.result_json();
    assert_eq!(j["bytes"], 2 << 20, "{j}");
    assert_eq!(j["sha256"], pattern_sha256(2 << 20), "{j}");
    assert_eq!(forwarded.bytes_to_guest(), 2 << 20);
    assert_eq!(forwarded.connections(), 1);
}

#[test]
fn forward_to_a_closed_port_closes_the_guests_connection_and_counts_it() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let out = Captured::default();
    let mut vm = user_net_vm(
        &probe,
        "probe.scenario=tcp-recv probe.peer=host.ringfence.internal:7002 probe.timeout_ms=30000",
        out.clone(),
    );
    let listener = vm.listen(Proto::Tcp, 7002).expect("listen before start");
    let vm = vm.start().expect("start");
    let forwarded = vm.forward(listener, addr).expect("forward");
    // The guest reads EOF at once (it would time out after 30 s otherwise).
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    assert_eq!(out.result_json()["bytes"], 0);
    assert_eq!(forwarded.connect_failures(), 1);
    assert_eq!(forwarded.connections(), 0);
    drop(forwarded);

    // A listener whose VM has stopped cannot be forwarded.
    let mut vm = user_net_vm(&probe, "probe.scenario=exit:0", Captured::default());
    let listener = vm.listen(Proto::Tcp, 7003).expect("listen");
    let vm = vm.start().expect("start");
    assert_eq!(wait(&vm), VmExit::GuestStatus(0));
    assert!(matches!(
        vm.forward(listener, addr),
        Err(NetHandleError::Stopped)
    ));
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dropping_a_forward_closes_connections_in_flight_and_joins_its_threads() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let server = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = server.local_addr().expect("addr");
    let holder = std::thread::spawn(move || {
        // Accepts and sends nothing: the connection stays open until the relay closes it.
        let (mut s, _) = server.accept().expect("accept the forwarded connection");
        s.set_read_timeout(Some(WAIT_LIMIT)).expect("timeout");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .expect("EOF once the forward is dropped");
        rest.len()
    });
    let out = Captured::default();
    let mut vm = user_net_vm(
        &probe,
        "probe.scenario=tcp-recv probe.peer=host.ringfence.internal:7005 probe.timeout_ms=30000",
        out.clone(),
    );
    let listener = vm.listen(Proto::Tcp, 7005).expect("listen before start");
    let vm = vm.start().expect("start");
    let forwarded = vm.forward(listener, addr).expect("forward");
    let deadline = Instant::now() + WAIT_LIMIT;
    while forwarded.active() == 0 {
        assert!(Instant::now() < deadline, "no connection: {}", out.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(thread_names().iter().any(|n| n == "relay-7005"));
    let dropped_at = Instant::now();
    drop(forwarded);
    assert!(
        dropped_at.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        dropped_at.elapsed()
    );
    let left: Vec<String> = thread_names()
        .into_iter()
        .filter(|n| n.ends_with("-7005"))
        .collect();
    assert!(left.is_empty(), "threads left behind: {left:?}");
    assert_eq!(holder.join().expect("holder thread"), 0);
    // The guest's connection was closed, not left to time out.
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    assert_eq!(out.result_json()["bytes"], 0);
}

#[test]
fn dial_guest_async_echoes_through_a_guest_service() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let out = Captured::default();
    let vm = user_net_vm(&probe, "probe.scenario=serve probe.port=8080", out.clone())
        .start()
        .expect("start");
    wait_for_console(&vm, &out, "probe: listening");
    let sent = pattern(200_000);
    let echoed = runtime().block_on(async {
        let conn = vm.dial_guest_async(Proto::Tcp, 8080).await.expect("dial");
        let (mut rx, mut tx) = conn.into_split();
        let write = async {
            tx.write_all(&sent).await.expect("write to the guest");
            tx.shutdown().await.expect("half-close");
        };
        let read = async {
            let mut echoed = Vec::new();
            rx.read_to_end(&mut echoed).await.expect("read the echo");
            echoed
        };
        let ((), echoed) = tokio::time::timeout(WAIT_LIMIT, async { tokio::join!(write, read) })
            .await
            .expect("the echo completes in time");
        echoed
    });
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "the echo differs from what was sent");
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
}

#[test]
fn async_accept_and_dial_out_work_on_a_current_thread_runtime() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let target = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let target_addr = target.local_addr().expect("addr");
    let target_side = std::thread::spawn(move || {
        let (mut s, _) = target.accept().expect("accept dial_out");
        let mut b = [0u8; 5];
        s.read_exact(&mut b).expect("read");
        b
    });
    let out = Captured::default();
    let mut config = user_net_config(
        &probe,
        "probe.scenario=tcp-send probe.peer=host.ringfence.internal:7004 probe.bytes=1M",
        out.clone(),
    );
    // dial_out is judged by the guest's policy: this rule lets it reach the target only.
    config.net.user.policy.rules = vec![format!("allow@loopback:tcp:{}", target_addr.port())];
    let mut vm = Vm::new(config);
    let mut listener = vm
        .listen(Proto::Tcp, 7004)
        .expect("listen before start")
        .into_async();
    assert_eq!(listener.port(), 7004);
    let vm = vm.start().expect("start");
    let upload = runtime().block_on(async {
        let mut conn = tokio::time::timeout(WAIT_LIMIT, listener.accept())
            .await
            .expect("the guest connects in time")
            .expect("accept");
        let mut got = Vec::new();
        tokio::time::timeout(WAIT_LIMIT, conn.read_to_end(&mut got))
            .await
            .expect("the upload completes in time")
            .expect("read the upload");
        // The guest's network is up now: dial out as the guest.
        let mut out = vm
            .dial_out_async(Proto::Tcp, target_addr)
            .await
            .expect("dial_out allowed by the rule");
        out.write_all(b"hello").await.expect("write");
        got
    });
    assert_eq!(target_side.join().expect("target thread"), *b"hello");
    assert_eq!(upload.len(), 1 << 20);
    assert!(
        upload == pattern(1 << 20),
        "the upload follows the probe's pattern"
    );
    assert_eq!(wait(&vm), VmExit::GuestStatus(0), "console: {}", out.text());
    // After the VM stopped: errors, not hangs, in async code too.
    runtime().block_on(async {
        assert!(matches!(
            listener.accept().await,
            Err(NetHandleError::Stopped)
        ));
        assert!(matches!(
            vm.dial_guest_async(Proto::Tcp, 80).await,
            Err(NetHandleError::Stopped)
        ));
        assert!(matches!(
            vm.dial_out_async(Proto::Tcp, target_addr).await,
            Err(NetHandleError::Stopped)
        ));
    });
}
