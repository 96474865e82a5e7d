//! End-to-end through the library API: switching a running VM's network off cuts its live
//! flow (not just new ones), and the guest sees its transfer fail.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ringfence::net::{NetBackendSpec, NetSettings};
use ringfence::{Console, Vm, VmConfig, VmExit};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn switching_the_network_off_cuts_a_live_transfer() {
    let probe = require!(kvm_and_probe());
    let (peer, addr) = host_peer(&["sink", "127.0.0.1:0", "--timeout", "60"]);
    let console = Capture::default();
    let mut cfg = VmConfig::new(&probe);
    cfg.cmdline = format!(
        "probe.scenario=tcp-send probe.peer=172.16.0.1:{} probe.bytes=1000G",
        addr.port()
    );
    cfg.console = Console::Sink(Box::new(console.clone()));
    cfg.timeout = Some(Duration::from_secs(60));
    cfg.legacy_pit = false;
    cfg.pass_tsc_khz = true;
    cfg.net = NetSettings {
        backend: NetBackendSpec::User,
        ..Default::default()
    };
    cfg.net.user.policy.rules = vec!["allow@host".into()];
    let mut vm = Vm::new(cfg);
    let control = vm.net_control();
    let runner = std::thread::spawn(move || vm.run());

    // Wait for the transfer to be under way (the guest is ready and the sink is receiving).
    let start = Instant::now();
    while !console.text().contains("probe: ready") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "guest never became ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    control
        .set_network_enabled(false)
        .expect("the VM has a user network");

    let exit = runner.join().expect("vm thread").expect("vm ran");
    let out = console.text();
    assert_ne!(
        exit,
        VmExit::GuestStatus(0),
        "the transfer must not succeed: {out}"
    );
    assert!(
        !matches!(exit, VmExit::Timeout { .. }),
        "cutting the flow must end the transfer, not leave it hanging: {out}"
    );
    assert!(out.contains("\"ok\":false"), "{out}");
    let o = peer.wait_with_output().expect("peer");
    let got: u64 = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|j| j["bytes"].as_u64())
        .next()
        .unwrap_or(0);
    assert!(
        got < 1000 << 30,
        "the sink saw the flow end early ({got} bytes)"
    );
}
