//! Least privilege for the VMM process (design §2, wave 2; docs/security.md).
//!
//! This module owns everything that narrows what a compromised ringfence could do to its
//! host: the per-thread seccomp filters ([`seccomp`]), the process-level steps (closing
//! inherited descriptors, `no_new_privs`, dropping capabilities, excluding guest memory from
//! core dumps: [`privileges`]), and the launcher thread that starts device workers so they
//! do not inherit a vCPU's filter. [`Sandbox`] is the one object `Vm::run` drives, in order:
//! [`Sandbox::start`] before any thread exists; [`Sandbox::worker_launcher`] for the
//! devices; [`Sandbox::drop_privileges`] once every host resource is open;
//! [`Sandbox::vcpu_start`] as the first thing each vCPU thread runs;
//! [`Sandbox::lock_vmm_thread`] before the run loop; and [`Sandbox::finish`] once the devices
//! are gone. It never opens a host resource itself.

mod launcher;
pub mod privileges;
pub mod seccomp;
mod seccomp_api;

use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::thread::ThreadLauncher;
use seccomp::{KindFilter, ThreadKind};

/// Test-only: names a thread kind (`worker`, `vcpu`, `vmm`, `launcher`) that makes one
/// forbidden syscall (`getpgid`) right after installing its filter, to prove violations are
/// fatal and reported. Never set outside tests; ringfence says so on stderr when it is.
pub const TEST_VIOLATION_ENV: &str = "RINGFENCE_TEST_SECCOMP_VIOLATION";

/// Whether the seccomp filters are installed (`--seccomp on|off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Every thread runs under its kind's filter (the default).
    #[default]
    On,
    /// No filters: for debugging a "disallowed syscall" report.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(SeccompMode::On),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!("bad --seccomp {s:?}: expected on or off")),
        }
    }
}

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A filter did not compile (a bug in the allow-lists).
    #[error("seccomp filter does not compile: {0}")]
    Filter(String),
    /// The kernel refused a filter.
    #[error(
        "cannot install the seccomp filter of the {kind} thread: {reason} (does the kernel have \
         CONFIG_SECCOMP_FILTER? --seccomp off runs without filters)"
    )]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// The OS error.
        reason: String,
    },
    /// Dropping privileges failed.
    #[error("cannot drop privileges: {0}")]
    Privileges(String),
    /// `Vm::run` was called on a thread that already runs under one of our filters.
    #[error(
        "this thread already runs under ringfence's {0} seccomp filter (from an earlier \
         Vm::run); run each VM on a thread of its own, or set VmConfig::seccomp to Off"
    )]
    AlreadyFiltered(&'static str),
    /// The launcher thread could not be created.
    #[error("cannot start the device launcher thread: {0}")]
    Launcher(#[source] std::io::Error),
}

/// The compiled filters, shared with the threads that install them.
pub(crate) struct Programs {
    vmm: KindFilter,
    vcpu: KindFilter,
    worker: KindFilter,
    /// The worker's list plus Unix sockets, for the virtio-vsock worker only.
    vsock_worker: KindFilter,
    launcher: KindFilter,
}

/// Code a vCPU thread runs before anything else (installs its filter).
pub type ThreadStart = Box<dyn FnOnce() -> Result<(), SandboxError> + Send>;

/// Which capabilities a root start keeps (bit n = capability n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilityPlan {
    /// Kept for the whole run.
    pub keep: u64,
    /// Kept only until each thread has started (it drops them before its filter goes in).
    pub during_start: u64,
}

impl CapabilityPlan {
    /// What a VM built from `cfg` needs: CAP_NET_RAW for `--net user` (the netstack opens
    /// its raw ICMP socket lazily, when ping sockets are not allowed); CAP_SYS_NICE while
    /// vCPU threads set a `--vcpu-nice` below the process's own.
    pub fn for_config(cfg: &crate::config::VmConfig) -> Self {
        let keep = match cfg.net.backend {
            crate::net::NetBackendSpec::User => 1 << privileges::CAP_NET_RAW,
            _ => 0,
        };
        let during_start = if cfg.vcpu_nice > 0 {
            1 << privileges::CAP_SYS_NICE
        } else {
            0
        };
        CapabilityPlan { keep, during_start }
    }
}

/// The VMM's least-privilege state for one `Vm::run`.
pub struct Sandbox {
    caps: CapabilityPlan,
    keep_caps: u64,
    programs: Option<Arc<Programs>>,
    launcher: Option<ThreadLauncher>,
    launcher_thread: Option<JoinHandle<()>>,
    violation: Option<ThreadKind>,
    /// The VMM thread's filter when it differs from the shared one (it may remove the vsock
    /// socket file: [`Sandbox::allow_vmm_unlink_in`]).
    vmm_filter: Option<KindFilter>,
}

/// The filters, compiled once per process: they depend on nothing but the thread kind, and
/// compiling them is a measurable part of a VM's start.
fn compiled_programs() -> Result<Arc<Programs>, SandboxError> {
    static PROGRAMS: std::sync::OnceLock<Arc<Programs>> = std::sync::OnceLock::new();
    if let Some(p) = PROGRAMS.get() {
        return Ok(p.clone());
    }
    let programs = Arc::new(Programs {
        vmm: seccomp::compile(ThreadKind::Vmm)?,
        vcpu: seccomp::compile(ThreadKind::Vcpu)?,
        worker: seccomp::compile(ThreadKind::Worker)?,
        vsock_worker: seccomp::compile_vsock_worker()?,
        launcher: seccomp::compile(ThreadKind::Launcher)?,
    });
    Ok(PROGRAMS.get_or_init(|| programs).clone())
}

impl Sandbox {
    /// Sets `no_new_privs`, and with seccomp on compiles the filters, installs the SIGSYS
    /// reporter and starts the launcher thread (which drops its own capabilities to the
    /// plan's `keep` at once). Call it before any other thread starts; the calling thread
    /// keeps its capabilities until [`Sandbox::drop_privileges`].
    ///
    /// `with_workers`: whether the VM has devices that start worker threads; without them no
    /// launcher thread is started (an idle VM with no network keeps one thread fewer).
    pub fn start(
        mode: SeccompMode,
        caps: CapabilityPlan,
        with_workers: bool,
    ) -> Result<Self, SandboxError> {
        privileges::set_no_new_privs()?;
        let keep_caps = caps.keep;
        if mode == SeccompMode::Off {
            return Ok(Sandbox {
                caps,
                keep_caps,
                programs: None,
                launcher: None,
                launcher_thread: None,
                violation: None,
                vmm_filter: None,
            });
        }
        let violation = test_violation_kind();
        let programs = compiled_programs()?;
        seccomp::install_sigsys_handler()?;
        let (launcher, launcher_thread) = if with_workers {
            let (l, t) = launcher::start(programs.clone(), violation, keep_caps)?;
            (Some(l), Some(t))
        } else {
            (None, None)
        };
        Ok(Sandbox {
            caps,
            keep_caps,
            programs: Some(programs),
            launcher,
            launcher_thread,
            violation,
            vmm_filter: None,
        })
    }

    /// Drops every capability of the calling thread the plan does not name (nothing happens
    /// without capabilities), bounding and ambient sets included. Call it once every host
    /// resource the VM needs is open (KVM, memory, tap, listeners, pcap, kernel and initrd)
    /// and before the vCPU threads start, which inherit the reduced set.
    pub fn drop_privileges(&self) -> Result<(), SandboxError> {
        privileges::drop_capabilities(self.caps.keep | self.caps.during_start).map(|_| ())
    }

    /// How devices start their worker threads: through the launcher when filters are on.
    pub fn worker_launcher(&self) -> ThreadLauncher {
        self.launcher.clone().unwrap_or_default()
    }

    /// What a vCPU thread runs once it is set up: dropping the start-only capabilities and
    /// installing the vCPU filter (when on).
    pub fn vcpu_start(&self) -> ThreadStart {
        let programs = self.programs.clone();
        let violation = self.violation;
        let keep = self.keep_caps;
        Box::new(move || {
            privileges::narrow_capabilities(keep)?;
            if let Some(p) = programs {
                seccomp::install(ThreadKind::Vcpu, &p.vcpu)?;
                test_violation(violation, ThreadKind::Vcpu);
            }
            Ok(())
        })
    }

    /// Lets the VMM thread, which tears the VM down, remove files in the directory open at
    /// `dir` (`unlinkat(dir, name, 0)`; no other directory, no subdirectories): the vsock
    /// socket file. Call it before [`Sandbox::lock_vmm_thread`]; nothing with seccomp off.
    pub fn allow_vmm_unlink_in(&mut self, dir: std::os::fd::RawFd) -> Result<(), SandboxError> {
        if self.programs.is_some() {
            self.vmm_filter = Some(seccomp::compile_vmm_unlinking_in(&[dir])?);
        }
        Ok(())
    }

    /// Installs the VMM filter on the calling thread, which keeps it for good (filters
    /// cannot be removed): call it from the thread that waits for the VM's end, once every
    /// other thread is started.
    pub fn lock_vmm_thread(&self) -> Result<(), SandboxError> {
        privileges::narrow_capabilities(self.keep_caps)?;
        if let Some(p) = &self.programs {
            seccomp::install(ThreadKind::Vmm, self.vmm_filter.as_ref().unwrap_or(&p.vmm))?;
            test_violation(self.violation, ThreadKind::Vmm);
        }
        Ok(())
    }

    /// Ends the launcher thread and waits for it; call it once the devices are dropped.
    pub fn finish(mut self) {
        self.launcher = None;
        if let Some(t) = self.launcher_thread.take() {
            let _ = t.join();
        }
    }
}

/// How a [`crate::host::Host`] starts its shared device threads: each new thread takes the
/// nice value `nice` (when not 0; a negative one needs `CAP_SYS_NICE`, and failing to set it
/// fails the start), sets `no_new_privs`, keeps only `CAP_NET_RAW` (the netstack's raw ICMP
/// fallback, as a worker of one VM keeps it) and, with seccomp on, installs the device
/// worker's filter before it runs any device code. A thread that cannot install its filter
/// ends the process, as a worker thread would: a device never runs unfiltered when filters
/// were asked for.
pub(crate) fn device_thread_launcher(
    mode: SeccompMode,
    nice: i8,
) -> Result<ThreadLauncher, SandboxError> {
    let programs = match mode {
        SeccompMode::Off => None,
        SeccompMode::On => {
            let p = compiled_programs()?;
            seccomp::install_sigsys_handler()?;
            Some(p)
        }
    };
    let violation = programs.as_ref().and_then(|_| test_violation_kind());
    Ok(ThreadLauncher::new(move |name, body| {
        let programs = programs.clone();
        let (ready_tx, ready) = std::sync::mpsc::sync_channel::<std::io::Result<()>>(1);
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            if nice != 0 {
                // SAFETY: setpriority with PRIO_PROCESS and 0 changes the calling thread's
                // nice value only (Linux keeps it per thread); no memory is passed.
                let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, i32::from(nice)) };
                if rc != 0 {
                    let e = std::io::Error::last_os_error();
                    let _ = ready_tx.send(Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot set the device thread's nice value to {nice}: {e} (a negative value needs CAP_SYS_NICE)"),
                    )));
                    return;
                }
            }
            let narrowed = privileges::set_no_new_privs()
                .and_then(|()| privileges::drop_capabilities(1 << privileges::CAP_NET_RAW))
                .map(|_| ());
            let installed = narrowed.and_then(|()| match &programs {
                Some(p) => seccomp::install(ThreadKind::Worker, &p.worker),
                None => Ok(()),
            });
            if let Err(e) = installed {
                eprintln!("ringfence: error: {e}");
                std::process::exit(seccomp::VIOLATION_STATUS);
            }
            let _ = ready_tx.send(Ok(()));
            test_violation(violation, ThreadKind::Worker);
            body();
        })?;
        // Returns once the thread runs under its filter (so a host is fully set up when
        // `Host::new` returns).
        let started = ready.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the device thread ended before it was ready",
            ))
        });
        match started {
            Ok(()) => Ok(handle),
            Err(e) => {
                let _ = handle.join();
                Err(e)
            }
        }
    }))
}

/// Puts the calling thread under the VMM filter (nothing with seccomp off, or when it carries
/// one of our filters already): for threads of a program that runs a VM and otherwise only
/// waits, such as the `ringfence` CLI's main thread once [`crate::Vm::start`] returned, so
/// that no thread of the process stays unfiltered.
pub fn filter_calling_thread(mode: SeccompMode) -> Result<(), SandboxError> {
    if mode == SeccompMode::Off || seccomp::current_kind().is_some() {
        return Ok(());
    }
    // Without CAP_SYS_ADMIN a filter needs no_new_privs on the thread first.
    privileges::set_no_new_privs()?;
    let filter = seccomp::compile(ThreadKind::Vmm)?;
    seccomp::install(ThreadKind::Vmm, &filter)
}

/// Fails if the calling thread already installed one of our filters (a second `Vm::run` on
/// the thread of an earlier one could not even open /dev/kvm).
pub fn ensure_unfiltered_thread() -> Result<(), SandboxError> {
    match seccomp::current_kind() {
        Some(kind) => Err(SandboxError::AlreadyFiltered(kind.name())),
        None => Ok(()),
    }
}

/// Filters the calling thread as `ringfence api`'s server thread (with seccomp on): sets
/// `no_new_privs`, installs the SIGSYS reporter and the API allow-list (docs/security.md).
pub fn filter_api_thread(mode: SeccompMode) -> Result<(), SandboxError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    privileges::set_no_new_privs()?;
    seccomp::install_sigsys_handler()?;
    let filter = seccomp::compile(ThreadKind::Api)?;
    seccomp::install(ThreadKind::Api, &filter)?;
    test_violation(test_violation_kind(), ThreadKind::Api);
    Ok(())
}

fn test_violation_kind() -> Option<ThreadKind> {
    let value = std::env::var(TEST_VIOLATION_ENV).ok()?;
    let kind = ThreadKind::ALL.into_iter().find(|k| k.name() == value)?;
    eprintln!(
        "ringfence: TEST SECCOMP VIOLATION ENABLED: the {} thread will make a forbidden syscall ({TEST_VIOLATION_ENV})",
        kind.name()
    );
    Some(kind)
}

/// The test hook: one forbidden syscall on a thread of kind `kind` if it was asked for.
fn test_violation(asked: Option<ThreadKind>, kind: ThreadKind) {
    if asked == Some(kind) {
        // SAFETY: getpgid(0) only reads the caller's process group; under the filter the
        // kernel raises SIGSYS instead of running it.
        unsafe {
            libc::getpgid(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_mode_parses_or_says_what_it_expects() {
        assert_eq!("on".parse::<SeccompMode>(), Ok(SeccompMode::On));
        assert_eq!("off".parse::<SeccompMode>(), Ok(SeccompMode::Off));
        assert!("no"
            .parse::<SeccompMode>()
            .unwrap_err()
            .contains("expected on or off"));
    }

    #[test]
    fn a_thread_that_ran_a_vm_is_told_to_use_another() {
        let verdict = std::thread::spawn(|| {
            let before = ensure_unfiltered_thread().is_ok();
            let filter = seccomp::compile(ThreadKind::Vmm).expect("compile");
            seccomp::install(ThreadKind::Vmm, &filter).expect("install");
            (
                before,
                ensure_unfiltered_thread().map_err(|e| e.to_string()),
            )
        })
        .join()
        .expect("thread");
        assert!(verdict.0);
        assert!(verdict.1.unwrap_err().contains("thread of its own"));
    }
}
