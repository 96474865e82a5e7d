//! Helpers for the tests that embed ringfence as a library (`embed`, `embed_forward`, `host`):
//! the probe VM configured as `ringfence run` configures it, and bounded waits on a running VM.

use std::path::Path;
use std::time::{Duration, Instant};

use ringfence::net::NetBackendSpec;
use ringfence::{Console, Vm, VmConfig, VmExit, VmHandle};

use super::Captured;

/// Upper bound for any single wait in these tests; reaching it fails the test, never hangs it.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// A probe VM configuration as `ringfence run` builds it for the probe, its console in `console`.
pub fn probe_config(probe: &Path, words: &str, console: Captured) -> VmConfig {
    let mut config = VmConfig::new(probe);
    config.cmdline = words.into();
    config.pass_tsc_khz = true;
    config.legacy_pit = false;
    config.console = Console::Sink(Box::new(console));
    config.timeout = Some(Duration::from_secs(120));
    config
}

/// [`probe_config`] with `--net user` and the default policy.
pub fn user_net_config(probe: &Path, words: &str, console: Captured) -> VmConfig {
    let mut config = probe_config(probe, words, console);
    config.net.backend = NetBackendSpec::User;
    config
}

/// A probe VM with `--net user` and the default policy.
pub fn user_net_vm(probe: &Path, words: &str, console: Captured) -> Vm {
    Vm::new(user_net_config(probe, words, console))
}

/// Waits (bounded by [`WAIT_LIMIT`]) for the VM to stop.
pub fn wait(vm: &VmHandle) -> VmExit {
    vm.wait_timeout(WAIT_LIMIT)
        .expect("the VM stops within the test's limit")
}

/// Waits (bounded by [`WAIT_LIMIT`]) until the guest's console shows `text`.
pub fn wait_for_console(vm: &VmHandle, out: &Captured, text: &str) {
    let start = Instant::now();
    while start.elapsed() < WAIT_LIMIT {
        if out.text().contains(text) {
            return;
        }
        assert!(vm.is_running(), "the VM stopped first: {}", out.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "no {text:?} on the console within {WAIT_LIMIT:?}: {}",
        out.text()
    );
}
