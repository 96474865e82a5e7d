//! End-to-end: many VMs through one `ringfence::Host` (shared device threads, address pools),
//! the probe guest on KVM. Several VMs on one shared device thread each move their bytes
//! intact, one stops while the others run, dropping VMs frees everything, and a start that
//! fails gives its subnet back.
//!
//! The tests of this file run one at a time (see [`serial`]): the leak check counts the
//! process's threads and fds.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::embedded::{self, wait, wait_for_console, WAIT_LIMIT};
use common::*;
use ringfence::embed::Proto;
use ringfence::host::{DeviceThreads, Host, HostConfig};
use ringfence::{Vm, VmConfig, VmError, VmExit, VmHandle};

/// A probe VM with `--net user` and the default policy, in 64 MiB.
fn user_net_config(probe: &Path, words: &str, console: Captured) -> VmConfig {
    let mut config = embedded::user_net_config(probe, words, console);
    config.mem_mib = 64;
    config
}

fn shared_host(threads: usize) -> Host {
    Host::new(HostConfig {
        device_threads: DeviceThreads::Shared(threads),
        ..HostConfig::default()
    })
    .expect("host")
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not within 60 s: {what}");
}

/// An uploading VM: the probe sends `mib` MiB of its pattern to a `listen` service.
struct Uploader {
    vm: VmHandle,
    out: Captured,
    listener: ringfence::embed::GuestListener,
}

fn uploader(host: &Host, probe: &Path, mib: usize) -> Uploader {
    let out = Captured::default();
    let words = format!(
        "probe.scenario=tcp-send probe.peer=host.ringfence.internal:7000 probe.bytes={mib}M"
    );
    let mut vm = Vm::new(user_net_config(probe, &words, out.clone()));
    let listener = vm.listen(Proto::Tcp, 7000).expect("listen before start");
    let vm = host.start(vm).expect("start through the host");
    Uploader { vm, out, listener }
}

/// Reads every guest's whole upload at once (a thread each) and checks it byte for byte.
fn check_uploads(uploads: &[Uploader], mib: usize) {
    let conns: Vec<_> = uploads
        .iter()
        .map(|u| {
            let conn = u
                .listener
                .accept_timeout(WAIT_LIMIT)
                .expect("accept")
                .expect("the guest connects");
            conn.set_read_timeout(Some(WAIT_LIMIT)).expect("timeout");
            (conn, u.out.clone())
        })
        .collect();
    std::thread::scope(|s| {
        for (mut conn, out) in conns {
            s.spawn(move || {
                let mut got = Vec::new();
                conn.read_to_end(&mut got).expect("read the upload");
                assert_eq!(got.len(), mib << 20, "console: {}", out.text());
                assert!(
                    got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
                    "the upload follows the probe's pattern"
                );
            });
        }
    });
}

#[test]
fn vms_on_one_shared_thread_move_their_bytes_and_stop_independently() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let host = shared_host(1);
    // A VM serving a port, stopped while the others upload.
    let out = Captured::default();
    let server = host
        .start(Vm::new(user_net_config(
            &probe,
            "probe.scenario=serve probe.port=8080",
            out.clone(),
        )))
        .expect("start the server VM");
    wait_for_console(&server, &out, "probe: listening");
    let mut conn = server.dial_guest(Proto::Tcp, 8080).expect("dial_guest");
    conn.set_read_timeout(Some(WAIT_LIMIT)).expect("timeout");
    conn.write_all(b"ping through the shared thread")
        .expect("write");
    let mut echo = [0u8; 30];
    conn.read_exact(&mut echo).expect("the guest echoes");
    assert_eq!(&echo, b"ping through the shared thread");

    let uploads: Vec<Uploader> = (0..3).map(|_| uploader(&host, &probe, 16)).collect();
    eventually("all four devices run on the one shared thread", || {
        host.vms_per_device_thread() == vec![4]
    });
    assert_eq!(host.subnets_in_use(), 4, "each VM holds its own /30");
    // Stop the server while the uploads are under way.
    server.kill();
    assert_eq!(wait(&server), VmExit::Killed);
    drop(conn);
    drop(server);
    assert_eq!(host.vms_per_device_thread(), vec![3]);
    assert_eq!(host.subnets_in_use(), 3, "the stopped VM's subnet is free");
    check_uploads(&uploads, 16);
    for u in &uploads {
        assert_eq!(
            wait(&u.vm),
            VmExit::GuestStatus(0),
            "console: {}",
            u.out.text()
        );
    }
    drop(uploads);
    assert_eq!(host.vms_per_device_thread(), vec![0]);
    assert_eq!(host.subnets_in_use(), 0);
}

/// The seccomp mode (`Seccomp:` of /proc/self/task/TID/status) of each thread whose name
/// starts with `prefix`.
fn seccomp_of_threads(prefix: &str) -> Vec<String> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim_end().starts_with(prefix) {
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            if let Some(line) = status.lines().find(|l| l.starts_with("Seccomp:")) {
                modes.push(line.split_whitespace().nth(1).unwrap_or("?").to_string());
            }
        }
    }
    modes
}

#[test]
fn shared_device_threads_run_under_the_worker_filter() {
    let _probe = require!(kvm_and_probe());
    let _one = serial();
    let host = shared_host(2);
    // 2 = SECCOMP_MODE_FILTER.
    assert_eq!(seccomp_of_threads("rf-devices-"), vec!["2", "2"]);
    drop(host);
}

/// The nice value (field 19 of /proc/self/task/TID/stat) of each thread named `prefix*`.
fn nice_of_threads(prefix: &str) -> Vec<i64> {
    let mut values = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
        // After "(comm)" the state is field 3, so field 19 is the 17th word.
        if let Some(v) = after
            .split_whitespace()
            .nth(16)
            .and_then(|v| v.parse().ok())
        {
            values.push(v);
        }
    }
    values
}

#[test]
fn shared_device_threads_take_the_nice_value_asked_for() {
    let _probe = require!(kvm_and_probe());
    let _one = serial();
    let with_nice = |nice: i8| {
        Host::new(HostConfig {
            device_threads: DeviceThreads::Shared(2),
            device_thread_nice: nice,
            ..HostConfig::default()
        })
    };
    // Lowering a thread's priority needs no privilege.
    let host = with_nice(5).expect("host at nice 5");
    assert_eq!(nice_of_threads("rf-devices-"), vec![5, 5]);
    drop(host);
    // Raising it needs CAP_SYS_NICE: root gets it, anyone else a clear error.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let host = with_nice(-5).expect("host at nice -5");
        assert_eq!(nice_of_threads("rf-devices-"), vec![-5, -5]);
        drop(host);
    } else {
        let err = with_nice(-5).expect_err("no CAP_SYS_NICE").to_string();
        assert!(err.contains("CAP_SYS_NICE"), "{err}");
    }
}

#[test]
fn stopping_vms_of_a_host_returns_threads_and_fds_to_their_baseline() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let host = shared_host(2);
    // One warm-up cycle: process-wide one-time set-up is not a leak.
    {
        let u = [uploader(&host, &probe, 1)];
        check_uploads(&u, 1);
        wait(&u[0].vm);
    }
    let tasks_before = count_dir("/proc/self/task");
    let fds_before = count_dir("/proc/self/fd");
    for i in 0..8 {
        let out = Captured::default();
        let vm = host
            .start(Vm::new(user_net_config(
                &probe,
                "probe.scenario=serve probe.port=80",
                out.clone(),
            )))
            .expect("start");
        wait_for_console(&vm, &out, "probe: listening");
        // A live flow into the guest and a service for it, dropped with (or after) the VM.
        let conn = vm.dial_guest(Proto::Tcp, 80).expect("dial_guest");
        let listener = vm.listen(Proto::Tcp, 7000).expect("listen");
        if i % 2 == 0 {
            vm.kill();
        }
        drop(vm);
        drop((conn, listener));
    }
    assert_eq!(host.vms_per_device_thread(), vec![0, 0]);
    assert_eq!(host.subnets_in_use(), 0);
    let mut tasks_after = count_dir("/proc/self/task");
    // A kernel io_uring helper of a closed ring may linger a moment.
    for _ in 0..200 {
        if tasks_after <= tasks_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        tasks_after = count_dir("/proc/self/task");
    }
    let fds_after = count_dir("/proc/self/fd");
    eprintln!("leak check over 8 cycles: tasks {tasks_before} -> {tasks_after}, fds {fds_before} -> {fds_after}");
    assert_eq!(tasks_after, tasks_before, "threads left behind");
    assert_eq!(fds_after, fds_before, "fds left open");
    // The host's own threads end with it.
    drop(host);
    let mut tasks_gone = count_dir("/proc/self/task");
    for _ in 0..200 {
        if tasks_gone <= tasks_before - 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        tasks_gone = count_dir("/proc/self/task");
    }
    assert_eq!(tasks_gone, tasks_before - 2, "the two device threads ended");
}

#[test]
fn a_start_that_fails_gives_its_subnet_back() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let host = shared_host(1);
    // A pool of exactly two /30s.
    let small = |words: &str| {
        let mut c = user_net_config(&probe, words, Captured::default());
        c.net.user.ipv4_pool = Some(("10.77.0.0".parse().unwrap(), 29));
        c
    };
    let first = host
        .start(Vm::new(small("probe.scenario=idle")))
        .expect("first VM");
    assert_eq!(host.subnets_in_use(), 1);
    // Failures after the subnet was taken: a missing kernel, a published port in use.
    let mut missing = small("probe.scenario=idle");
    missing.kernel = "/nonexistent/probe.elf".into();
    let err = host.start(Vm::new(missing)).expect_err("no kernel");
    assert!(matches!(err, VmError::Boot(_)), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut busy = small("probe.scenario=idle");
    busy.net.user.publish = vec![format!("{}:80", taken.local_addr().unwrap())
        .parse()
        .expect("publish spec")];
    host.start(Vm::new(busy))
        .expect_err("the published port is taken");
    assert_eq!(
        host.subnets_in_use(),
        1,
        "failed starts gave their subnets back"
    );
    // So the pool's second /30 is still there, and then the pool is full.
    let second = host
        .start(Vm::new(small("probe.scenario=idle")))
        .expect("second VM gets the second /30");
    let err = host
        .start(Vm::new(small("probe.scenario=idle")))
        .expect_err("the pool is full");
    assert!(matches!(err, VmError::Addresses(_)), "{err}");
    assert!(
        err.to_string().contains("10.77.0.0/29 is exhausted"),
        "{err}"
    );
    drop(first);
    let third = host
        .start(Vm::new(small("probe.scenario=idle")))
        .expect("a stopped VM's /30 is free again");
    drop((second, third));
    assert_eq!(host.subnets_in_use(), 0);
}

#[test]
fn thread_per_vm_stays_available_behind_one_setting() {
    let probe = require!(kvm_and_probe());
    let _one = serial();
    let host = Host::new(HostConfig {
        device_threads: DeviceThreads::PerVm,
        ..HostConfig::default()
    })
    .expect("host");
    assert_eq!(host.device_threads(), 0);
    let uploads: Vec<Uploader> = (0..2).map(|_| uploader(&host, &probe, 4)).collect();
    assert_eq!(
        host.subnets_in_use(),
        2,
        "distinct subnets without shared threads too"
    );
    check_uploads(&uploads, 4);
    for u in &uploads {
        assert_eq!(wait(&u.vm), VmExit::GuestStatus(0));
    }
    // Torn down (wait returned): the subnets are back.
    assert_eq!(host.subnets_in_use(), 0);
    drop(uploads);
    assert_eq!(host.subnets_in_use(), 0);
}
