//! A started VM: [`VmHandle`] and the supervisor thread behind it.
//!
//! [`Vm::start`](crate::Vm::start) builds the VM and hands everything it created (KVM fds,
//! guest memory, the I/O bus with its devices, the vCPU fds) to one supervisor thread per VM.
//! The supervisor starts the vCPU threads, waits on the VM's own exit eventfd for the first of:
//! a vCPU reporting an exit, [`VmHandle::kill`], the timeout, or (only when the embedder opted
//! in with [`Vm::route_stop_signals`](crate::Vm::route_stop_signals)) a stop signal; then it
//! stops and joins the vCPUs, drops the bus (which stops and joins the device workers), unmaps
//! guest memory, closes the KVM fds and publishes the [`VmExit`]. Nothing here is process-wide
//! except the no-op handler of the vCPU kick signal (installed once; it only makes `KVM_RUN`
//! return), so any number of VMs can run in one process.
//!
//! This module must never block the caller of [`VmHandle::try_wait`] or [`VmHandle::kill`],
//! and never outlive the handle: dropping it kills the VM and joins the supervisor.

use std::os::unix::io::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use devices::net::pcap::CaptureSwitch;

use crate::embed::GuestNet;
use crate::exit::VmExit;
use crate::io::IoBus;
use crate::kvm::KvmHost;
use crate::net_policy::PolicyHandle;
use crate::signals::{self, StopSignalGuard};
use crate::vcpu::{self, VmShared};
use crate::vm::{NetControl, VmError};

/// When a running VM's vCPUs are first kicked to check for a dead halt (a vCPU halted with
/// interrupts off, which KVM never reports); each later check waits twice as long, up to
/// [`MAX_HALT_CHECK_INTERVAL`]. A guest that does `cli; hlt` at start is reported within half
/// a second; one that does it after a long idle stretch within 8 s; an idle VM costs its
/// supervisor a wake-up every 8 s (`cargo xtask bench density` measures that).
const HALT_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// The longest wait between two dead-halt checks.
const MAX_HALT_CHECK_INTERVAL: Duration = Duration::from_secs(8);
/// How long a partial console line (a prompt) may wait before it is written out: short
/// enough to look immediate, long enough to let the rest of a line arrive first.
const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(50);
/// How long stopping may take before the VMM gives up on a vCPU thread.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Everything a built VM owns, handed to its supervisor thread. Field order is drop order
/// where it matters: the bus (devices, their workers) goes before guest memory.
pub(crate) struct Parts {
    /// The VM fd (closed last, with `host`).
    pub vm: VmFd,
    /// The /dev/kvm handle the VM was created from.
    pub host: KvmHost,
    /// Guest memory; unmapped when the supervisor ends.
    pub mem: GuestMemoryMmap,
    /// Port and MMIO devices.
    pub bus: Arc<IoBus>,
    /// The vCPUs, in index order, not yet running.
    pub vcpus: Vec<VcpuFd>,
    /// Nice value of the vCPU threads.
    pub vcpu_nice: u8,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// Counters of the network device, printed at the end when `print_net_stats`.
    pub net_metrics: Option<Arc<devices::net::NetMetrics>>,
    /// `--net-stats`.
    pub print_net_stats: bool,
    /// The live policy of the `user` network, if any.
    pub policy: Option<PolicyHandle>,
    /// Whether SIGINT/SIGTERM/SIGHUP stop this VM (the CLI opts in; libraries do not).
    pub route_stop_signals: bool,
    /// The embedding API's side of the `user` network, if the VM has one.
    pub guest_net: Option<GuestNet>,
    /// The network device's capture switch, if the VM has a network device.
    pub capture: Option<Arc<CaptureSwitch>>,
    /// Seccomp filters and capabilities: the vCPU threads and the supervisor take theirs.
    pub sandbox: crate::sandbox::Sandbox,
    /// The TLS proxy (`--tls-intercept`), stopped and joined after the devices.
    pub tls: Option<TlsParts>,
    /// The VM's subnets from its [`Host`](crate::host::Host)'s pools, given back once the VM
    /// is torn down.
    pub addresses: Option<crate::host::AddressLease>,
    /// Each drive's id and the handle that swaps its image.
    pub drives: Vec<(String, devices::block::DriveSwap)>,
}

/// The running TLS proxy of a VM: stopped and its thread joined when dropped.
pub(crate) struct TlsParts {
    /// The handle (stats, CA, stop).
    pub proxy: Arc<tlsproxy::TlsProxy>,
    /// Its thread (taken when joined).
    pub thread: Option<JoinHandle<()>>,
}

impl Drop for TlsParts {
    fn drop(&mut self) {
        self.proxy.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the supervisor publishes for the handle.
struct Status {
    exit: Mutex<Option<VmExit>>,
    done: Condvar,
}

impl Status {
    /// Records the exit (the first one stays) and wakes every waiter.
    fn publish(&self, exit: VmExit) {
        let mut slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
        self.done.notify_all();
    }
}

/// A running (or stopped) VM, returned by [`Vm::start`](crate::Vm::start).
///
/// `Send + Sync`: share it behind an `Arc` to wait on one thread and kill from another.
/// Dropping it stops the VM (as [`kill`](Self::kill) does) and waits until every thread it
/// started is joined, every fd it opened is closed and guest memory is unmapped.
///
/// ```no_run
/// use ringfence::{Vm, VmConfig, VmExit};
///
/// let mut config = VmConfig::new("probe.elf");
/// config.cmdline = "probe.scenario=exit:3".into();
/// let vm = Vm::new(config).start()?;
/// assert_eq!(vm.wait(), VmExit::GuestStatus(3));
/// # Ok::<(), ringfence::VmError>(())
/// ```
pub struct VmHandle {
    shared: Arc<VmShared>,
    status: Arc<Status>,
    supervisor: Option<JoinHandle<()>>,
    net: NetControl,
    guest_net: Option<GuestNet>,
    capture: Option<Arc<CaptureSwitch>>,
    tls: Option<Arc<tlsproxy::TlsProxy>>,
    drives: Vec<(String, devices::block::DriveSwap)>,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("exit", &self.try_wait())
            .finish_non_exhaustive()
    }
}

impl VmHandle {
    /// Starts the supervisor for `parts`; returns once the vCPU threads run (or failed to
    /// start, in which case everything is already torn down).
    pub(crate) fn spawn(parts: Parts, net: NetControl) -> Result<VmHandle, VmError> {
        let shared = Arc::new(VmShared::new().map_err(setup("the VM's exit eventfd"))?);
        let guard = if parts.route_stop_signals {
            Some(signals::route_stop_signals(&shared.exit_evt).map_err(setup("stop signals"))?)
        } else {
            None
        };
        signals::install_vcpu_kick_handler().map_err(setup("the vCPU kick signal handler"))?;
        {
            let shared = shared.clone();
            parts.bus.set_partial_waker(Box::new(move || {
                let _ = shared.exit_evt.write(1);
            }));
        }
        if let Some(policy) = &parts.policy {
            net.attach(policy.clone());
        }
        if let Some(tls) = &parts.tls {
            let shared = shared.clone();
            tls.proxy.on_terminate(Box::new(move |v| {
                shared.request_stop(VmExit::SecretViolation {
                    secret: v.env.clone(),
                    host: v.host.clone(),
                });
            }));
        }
        let guest_net = parts.guest_net.clone();
        let capture = parts.capture.clone();
        let tls = parts.tls.as_ref().map(|t| t.proxy.clone());
        let drives = parts.drives.clone();
        let status = Arc::new(Status {
            exit: Mutex::new(None),
            done: Condvar::new(),
        });
        let (started_tx, started_rx) = mpsc::sync_channel(1);
        let supervisor = {
            let shared = shared.clone();
            let status = status.clone();
            let net = net.clone();
            std::thread::Builder::new()
                .name("vm-supervisor".into())
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| {
                        supervise(parts, shared, status.clone(), guard, started_tx, &net)
                    });
                    // A panic must not leave wait() blocked forever: publish an exit anyway
                    // (what the unwinding dropped is released; the rest leaks).
                    if std::panic::catch_unwind(run).is_err() {
                        net.mark_stopped();
                        status.publish(VmExit::Internal(
                            "the VM's supervisor thread panicked (a ringfence bug); the VM is stopped"
                                .into(),
                        ));
                    }
                })
                .map_err(setup("the VM supervisor thread"))?
        };
        let handle = VmHandle {
            shared,
            status,
            supervisor: Some(supervisor),
            net,
            guest_net,
            capture,
            tls,
            drives,
        };
        match started_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(setup("a vCPU thread")(e)),
            Err(_) => Err(VmError::Setup {
                what: "the VM supervisor thread",
                source: std::io::Error::other("it ended before starting the vCPUs"),
            }),
        }
    }

    /// Blocks until the VM has stopped and everything it used is released, and returns why it
    /// stopped. Every call (from any thread) returns the same exit.
    pub fn wait(&self) -> VmExit {
        let mut exit = self.status.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = exit.as_ref() {
                return e.clone();
            }
            exit = self
                .status
                .done
                .wait(exit)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The exit, if the VM has stopped and been torn down; `None` while it runs. Never blocks.
    ///
    /// ```no_run
    /// # fn f(vm: ringfence::VmHandle) {
    /// use std::time::Duration;
    /// if vm.try_wait().is_none() && vm.wait_timeout(Duration::from_secs(5)).is_none() {
    ///     vm.kill(); // still running after 5 s: stop it
    /// }
    /// println!("{}", vm.wait());
    /// # }
    /// ```
    pub fn try_wait(&self) -> Option<VmExit> {
        self.status
            .exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Like [`wait`](Self::wait), but gives up after `limit` and returns `None` then.
    pub fn wait_timeout(&self, limit: Duration) -> Option<VmExit> {
        let deadline = Instant::now() + limit;
        let mut exit = self.status.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = exit.as_ref() {
                return Some(e.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            exit = self
                .status
                .done
                .wait_timeout(exit, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The status `ringfence run` would exit with ([`VmExit::status`]), once the VM stopped.
    pub fn exit_status(&self) -> Option<i32> {
        self.try_wait().map(|e| e.status())
    }

    /// Whether the VM is still running (not yet stopped and torn down).
    pub fn is_running(&self) -> bool {
        self.try_wait().is_none()
    }

    /// Asks the VM to stop; returns at once (use [`wait`](Self::wait) to know when it has).
    /// The exit is [`VmExit::Killed`] unless the VM had already stopped for another reason.
    /// Calling it again, or after the VM stopped, does nothing.
    pub fn kill(&self) {
        self.shared.request_stop(VmExit::Killed);
    }

    /// Gives the running drive `id` a new image file (Firecracker's `PATCH /drives`): the file
    /// is opened in the drive's mode (an empty one is a drive of no sectors), the guest's
    /// next requests go to it and the guest is told its new size.
    pub fn update_drive(&self, id: &str, path: &std::path::Path) -> Result<(), String> {
        if !self.is_running() {
            return Err("the VM has stopped".into());
        }
        let (_, swap) = self
            .drives
            .iter()
            .find(|(d, _)| d == id)
            .ok_or_else(|| format!("the VM has no drive {id:?}"))?;
        let image = devices::block::DiskImage::open_with(path, swap.read_only(), true)
            .map_err(|e| e.to_string())?;
        swap.swap(image).map(drop).map_err(|e| e.to_string())
    }

    /// The VM's network policy controls (`--net user` only; see [`NetControl`]).
    pub fn net_control(&self) -> NetControl {
        self.net.clone()
    }

    /// The embedding side of the `user` network ([`crate::embed`]), if the VM has one.
    pub(crate) fn guest_net(&self) -> Option<&GuestNet> {
        self.guest_net.as_ref()
    }

    /// The network device's capture switch, if the VM has a network device.
    pub(crate) fn capture_switch(&self) -> Option<&Arc<CaptureSwitch>> {
        self.capture.as_ref()
    }

    /// The TLS interception CA the guest trusts (PEM), if the VM intercepts TLS: for a
    /// program that talks to the guest's clients or checks what they saw.
    ///
    /// ```no_run
    /// # use ringfence::{Vm, VmConfig};
    /// let mut config = VmConfig::new("probe.elf");
    /// config.net.user.tls_intercept = Some(Default::default());
    /// let vm = Vm::new(config).start()?;
    /// println!("{}", vm.tls_ca_pem().unwrap_or("no interception"));
    /// # Ok::<(), ringfence::VmError>(())
    /// ```
    pub fn tls_ca_pem(&self) -> Option<&str> {
        self.tls.as_deref().map(tlsproxy::TlsProxy::ca_pem)
    }

    /// The TLS proxy's counters (`tls_proxy_*`), if the VM intercepts TLS.
    pub fn tls_stats(&self) -> Option<Vec<(&'static str, u64)>> {
        self.tls.as_ref().map(|t| t.stats().snapshot())
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        self.kill();
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
    }
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Setup { what, source }
}

/// The supervisor thread: runs the VM to its end, tears it down, publishes the exit.
fn supervise(
    parts: Parts,
    shared: Arc<VmShared>,
    status: Arc<Status>,
    signal_guard: Option<StopSignalGuard>,
    started: mpsc::SyncSender<std::io::Result<()>>,
    net: &NetControl,
) {
    let Parts {
        vm,
        host,
        mem,
        bus,
        vcpus,
        vcpu_nice,
        timeout,
        net_metrics,
        print_net_stats,
        policy: _,
        route_stop_signals: _,
        guest_net: _,
        capture: _,
        sandbox,
        tls,
        addresses,
        drives: _,
    } = parts;
    let since = Instant::now();
    let mut threads = Vec::with_capacity(vcpus.len());
    let mut spawn_error = None;
    for (index, fd) in vcpus.into_iter().enumerate() {
        let start = sandbox.vcpu_start();
        match vcpu::spawn(
            index as u8,
            fd,
            bus.clone(),
            shared.clone(),
            vcpu_nice,
            start,
        ) {
            Ok(t) => threads.push(t),
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
    }
    // Every thread of this VM is started: the supervisor takes the VMM filter for good.
    if spawn_error.is_none() {
        if let Err(e) = sandbox.lock_vmm_thread() {
            spawn_error = Some(std::io::Error::other(e.to_string()));
        }
    }
    let exit = match spawn_error {
        Some(e) => {
            let _ = started.send(Err(e));
            stop_vcpus(&shared, threads, VmExit::Internal("setup failed".into()))
        }
        None => {
            let _ = started.send(Ok(()));
            let watch_signals = signal_guard.is_some();
            let exit = wait_for_exit(&shared, &bus, &threads, timeout, since, watch_signals);
            stop_vcpus(&shared, threads, exit)
        }
    };
    drop(signal_guard);
    bus.flush_console();
    // A Linux guest booted with panic=-1 reboots after a panic, and one without it hangs
    // until --timeout: its console tells those apart from a reboot it asked for.
    let exit = match (exit, bus.guest_panic()) {
        (VmExit::Reset | VmExit::Timeout { .. }, Some(message)) => VmExit::GuestPanic { message },
        (exit, _) => exit,
    };
    // The vCPU threads are joined: dropping the bus stops the device workers (flushing pcap
    // files) while guest memory is still mapped.
    drop(bus);
    drop(mem);
    drop(vm);
    drop(host);
    sandbox.finish();
    // Only now (the netstack and its sockets are gone) may another VM take the subnets.
    drop(addresses);
    if let (true, Some(m)) = (print_net_stats, net_metrics) {
        let tls_stats = tls.as_ref().map(|t| t.proxy.stats().snapshot());
        eprintln!(
            "ringfence: net stats: {}",
            crate::net::stats_json(&m, tls_stats.unwrap_or_default())
        );
    }
    // Stops the proxy and joins its thread.
    drop(tls);
    // Handles fail cleanly from the moment wait() can return.
    net.mark_stopped();
    status.publish(exit);
}

/// Blocks until a vCPU reports an exit, the VM is killed, a routed stop signal arrives, or the
/// timeout expires.
fn wait_for_exit(
    shared: &VmShared,
    bus: &IoBus,
    threads: &[JoinHandle<()>],
    timeout: Option<Duration>,
    started: Instant,
    watch_signals: bool,
) -> VmExit {
    let mut halt_interval = HALT_CHECK_INTERVAL;
    let mut next_halt_check = Instant::now() + halt_interval;
    let mut flush_at: Option<Instant> = None;
    loop {
        if let Some(exit) = shared.exit() {
            return exit;
        }
        if let Some(sig) = signals::stop_signal().filter(|_| watch_signals) {
            return VmExit::Signal(sig);
        }
        let now = Instant::now();
        if let Some(limit) = timeout {
            if now.duration_since(started) >= limit {
                return VmExit::Timeout {
                    secs: limit.as_secs_f64(),
                };
            }
        }
        if flush_at.is_none() && bus.console_partial_pending() {
            flush_at = Some(now + PARTIAL_LINE_DELAY);
        }
        if flush_at.is_some_and(|at| now >= at) {
            bus.flush_console();
            flush_at = None;
        }
        if now >= next_halt_check {
            kick(threads);
            halt_interval = (halt_interval * 2).min(MAX_HALT_CHECK_INTERVAL);
            next_halt_check = now + halt_interval;
        }
        let mut wake = next_halt_check;
        if let Some(at) = flush_at {
            wake = wake.min(at);
        }
        if let Some(limit) = timeout {
            wake = wake.min(started + limit);
        }
        poll_readable(
            shared.exit_evt.as_raw_fd(),
            wake.saturating_duration_since(now),
        );
        let _ = shared.exit_evt.read();
    }
}

fn poll_readable(fd: i32, wait: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
    unsafe {
        libc::poll(&mut pfd, 1, ms);
    }
}

fn kick(threads: &[JoinHandle<()>]) {
    use std::os::unix::thread::JoinHandleExt;
    for t in threads.iter().filter(|t| !t.is_finished()) {
        // SAFETY: the pthread id comes from a JoinHandle we still own, so the thread has not
        // been joined and its id is valid; the kick signal has a no-op handler installed.
        unsafe {
            libc::pthread_kill(t.as_pthread_t(), signals::vcpu_kick_signal());
        }
    }
}

/// Stops and joins every vCPU thread, returning the exit to report.
fn stop_vcpus(shared: &VmShared, threads: Vec<JoinHandle<()>>, exit: VmExit) -> VmExit {
    shared.request_stop(exit);
    let deadline = Instant::now() + STOP_GRACE;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        kick(&threads);
        std::thread::sleep(Duration::from_millis(2));
    }
    let stuck = threads.iter().filter(|t| !t.is_finished()).count();
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        }
    }
    let reported = shared
        .exit()
        .unwrap_or_else(|| VmExit::Internal("no exit recorded".into()));
    if stuck > 0 {
        return VmExit::Internal(format!(
            "{stuck} vCPU thread(s) did not stop within {STOP_GRACE:?} after: {reported}"
        ));
    }
    reported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<VmHandle>();
    }
}
