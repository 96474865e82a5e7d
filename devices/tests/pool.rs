//! Devices served by a shared device thread (`devices::pool`): several devices on one thread
//! each move their own frames, one stops while the others run, and nothing stays behind.

use std::time::Duration;

use devices::net::backend::loopback::LoopbackMode;
use devices::net::header::VirtioNetHdr;
use devices::net::{NetConfig, RX_QUEUE, TX_QUEUE};
use devices::pool::DeviceThread;
use devices::testing::{eth_frame, NetHarness};
use devices::thread::ThreadLauncher;

const T: Duration = Duration::from_secs(10);

/// The tests count this process's threads and fds: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

fn pooled(thread: &DeviceThread) -> NetHarness {
    let config = NetConfig {
        pool: Some(thread.clone()),
        ..NetConfig::default()
    };
    NetHarness::new(LoopbackMode::Echo, config, u64::MAX).expect("device")
}

/// Sends `n` frames marked with `seed` and checks each comes back (echo backend) intact.
fn round_trip(h: &mut NetHarness, seed: u8, n: usize) {
    h.driver.post_rx(n, 2048).expect("post rx");
    for i in 0..n {
        let f = eth_frame(200 + i, seed.wrapping_add(i as u8));
        h.driver.send(&VirtioNetHdr::default(), &f).expect("send");
    }
    h.driver.wait_used(TX_QUEUE, n, T).expect("tx used");
    let got = h.driver.recv_frames(n, T).expect("rx frames");
    assert_eq!(got.len(), n);
    for (i, (_, f)) in got.iter().enumerate() {
        assert_eq!(
            *f,
            eth_frame(200 + i, seed.wrapping_add(i as u8)),
            "frame {i}"
        );
    }
}

#[test]
fn several_devices_share_one_thread_and_leave_it_cleanly() {
    let _serial = serial();
    // Threads are counted at their settled minimum: the kernel's io_uring helpers come and go.
    let threads_before = count_dir("/proc/self/task");
    let fds_before = count_dir("/proc/self/fd");
    let thread = DeviceThread::spawn("rf-dev-test", &ThreadLauncher::direct()).expect("spawn");
    let mut devices: Vec<NetHarness> = (0..4).map(|_| pooled(&thread)).collect();
    assert_eq!(
        thread.devices(),
        4,
        "every activated device runs on the shared thread"
    );
    for round in 0..3u8 {
        for (i, h) in devices.iter_mut().enumerate() {
            round_trip(h, round * 16 + i as u8, 8);
        }
    }
    // One device stops (reset, then dropped) while the others keep moving frames.
    let gone = devices.remove(1);
    drop(gone);
    assert_eq!(thread.devices(), 3, "a dropped device leaves the thread");
    for (i, h) in devices.iter_mut().enumerate() {
        round_trip(h, 100 + i as u8, 16);
        assert_eq!(h.metrics.tx_malformed.total(), 0);
    }
    // A reset device leaves the thread and joins it again on its next activation.
    let h = &mut devices[0];
    h.driver.reset_and_reinit(u64::MAX).expect("reinit");
    assert_eq!(thread.devices(), 3);
    round_trip(h, 200, 4);
    drop(devices);
    assert_eq!(thread.devices(), 0);
    assert!(thread.passes() > 0);
    drop(thread);
    assert_eq!(count_dir("/proc/self/fd"), fds_before, "every fd is closed");
    let mut threads = count_dir("/proc/self/task");
    for _ in 0..100 {
        if threads <= threads_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        threads = count_dir("/proc/self/task");
    }
    assert!(
        threads <= threads_before,
        "the shared thread ended: {threads} threads, {threads_before} before"
    );
}

#[test]
fn a_device_is_not_served_by_a_thread_of_its_own() {
    let _serial = serial();
    let thread = DeviceThread::spawn("rf-dev-test2", &ThreadLauncher::direct()).expect("spawn");
    let spawned = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = spawned.clone();
    let config = NetConfig {
        pool: Some(thread.clone()),
        launcher: ThreadLauncher::new(move |name, body| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::Builder::new().name(name).spawn(body)
        }),
        ..NetConfig::default()
    };
    let mut h = NetHarness::new(LoopbackMode::Echo, config, u64::MAX).expect("device");
    round_trip(&mut h, 7, 4);
    assert_eq!(
        spawned.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no worker thread was started"
    );
    assert_eq!(h.driver.used_idx(RX_QUEUE), 4);
}
