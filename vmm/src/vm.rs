//! The VM life cycle: validate, create, load, run, stop.
//!
//! [`Vm::run`] is the whole of `ringfence run`: it opens KVM, creates the VM with an in-kernel
//! irqchip and PIT, maps guest memory, loads the kernel, builds the vCPUs, and then waits on one
//! eventfd for the first of: a vCPU reporting an exit, a stop signal, or the timeout.

use std::fs::File;
use std::io::LineWriter;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootError};
use crate::config::{self, ConfigError, Console, VmConfig};
use crate::exit::VmExit;
use crate::io::serial::{ConsoleSink, SerialConsole};
use crate::io::IoBus;
use crate::kvm::{self, regs, KvmError, KvmHost};
use crate::layout::{self, KVM_TSS_ADDRESS, SERIAL_IRQ};
use crate::sandbox::{privileges, CapabilityPlan, Sandbox};
use crate::signals;
use crate::vcpu::{self, VmShared};

/// Errors that stop a VM from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM is missing, inaccessible or failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The configuration does not fit this host.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory {
        /// Size asked for.
        mib: u64,
        /// Why it failed.
        reason: String,
    },
    /// The console file cannot be created.
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        /// The path given with --console.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The network device could not be set up.
    #[error(transparent)]
    Net(#[from] crate::net::NetSetupError),
    /// The seccomp filters or the privilege drop could not be set up.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// A thread, eventfd or signal handler could not be set up.
    #[error("cannot set up {what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Setup { what, source }
}

/// How often a running VM's vCPUs are kicked to check for a dead halt (and partial console
/// lines are written out).
const HALT_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long stopping may take before the VMM gives up on a vCPU thread.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A VM ready to run.
pub struct Vm {
    config: VmConfig,
    policy_slot: Option<Arc<std::sync::Mutex<Option<crate::net_policy::PolicyHandle>>>>,
}

/// Changes the network policy of a running VM from another thread (library API).
#[derive(Clone, Default)]
pub struct NetControl {
    slot: Arc<std::sync::Mutex<Option<crate::net_policy::PolicyHandle>>>,
}

impl NetControl {
    fn handle(&self) -> Option<crate::net_policy::PolicyHandle> {
        self.slot.lock().ok().and_then(|s| s.clone())
    }

    /// Replaces the policy; new flows and DNS queries are judged by it at once. Fails if the
    /// VM has no `user` network (yet) or the policy does not compile.
    pub fn set_policy(&self, policy: &policy::Policy) -> Result<(), String> {
        self.handle()
            .ok_or("the VM has no user-mode network (or has not started)")?
            .set_policy(policy)
            .map_err(|e| e.to_string())
    }

    /// Turns the VM's network on or off; off refuses every new flow and DNS query.
    pub fn set_network_enabled(&self, enabled: bool) -> Result<(), String> {
        self.handle()
            .ok_or("the VM has no user-mode network (or has not started)")?
            .set_network_enabled(enabled);
        Ok(())
    }
}

impl Vm {
    /// Takes a configuration; nothing is created until [`Vm::run`].
    pub fn new(config: VmConfig) -> Self {
        Vm {
            config,
            policy_slot: None,
        }
    }

    /// A handle to change the network policy while [`Vm::run`] runs (on another thread).
    pub fn net_control(&mut self) -> NetControl {
        let control = NetControl::default();
        self.policy_slot = Some(control.slot.clone());
        control
    }

    /// Builds the VM, runs it to its end and returns why it ended.
    pub fn run(self) -> Result<VmExit, VmError> {
        let Vm {
            config: cfg,
            policy_slot,
        } = self;
        crate::sandbox::ensure_unfiltered_thread()?;
        let host = KvmHost::open()?;
        host.check_required_caps()?;
        config::validate_resources(
            cfg.mem_mib,
            u32::from(cfg.vcpus),
            config::host_memory_mib(),
            host.max_vcpus(),
        )?;
        let caps = CapabilityPlan::for_config(&cfg);
        let sink = open_console(cfg.console)?;
        let net_backend = crate::net::prepare(&cfg.net)?;

        let vm = host
            .kvm()
            .create_vm()
            .map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(KvmError::ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        if cfg.legacy_pit {
            vm.create_pit2(pit)
                .map_err(KvmError::ioctl("KVM_CREATE_PIT2"))?;
        }

        let mem_bytes = cfg.mem_mib << 20;
        let mem = create_memory(&vm, mem_bytes, cfg.mem_mib)?;
        let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
        for index in 0..cfg.vcpus {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
            fd.set_cpuid2(&kvm::cpuid::for_vcpu(&host, index, cfg.vcpus)?)
                .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
            kvm::msrs::set_boot_msrs(&fd)?;
            kvm::lapic::set_lint(&fd)?;
            vcpus.push(fd);
        }
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(setup("serial irqfd"))?;
        vm.register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(KvmError::ioctl("KVM_IRQFD (serial)"))?;
        let mut bus = IoBus::new(SerialConsole::new(serial_irq, sink));
        let mut cmdline_text = cfg.cmdline.clone();
        let mut net_metrics = None;
        // Before any thread starts (the launcher for device workers is the first).
        let sandbox = Sandbox::start(cfg.seccomp, caps)?;
        if let Some(prepared) = net_backend {
            if let (Some(policy), Some(slot)) = (&prepared.policy, &policy_slot) {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(policy.clone());
                }
            }
            let launcher = sandbox.worker_launcher();
            let dev = crate::net::attach(&vm, &mem, 0, prepared, &cfg.net, launcher)?;
            bus.add_mmio(dev.base, layout::VIRTIO_MMIO_WINDOW, dev.device);
            net_metrics = Some(dev.metrics);
            cmdline_text = format!("{} {}", dev.cmdline, cmdline_text);
        }
        if cfg.pass_tsc_khz && !cmdline_text.contains("probe.tsc_khz=") {
            if let Some(khz) = vcpus.first().and_then(|v| v.get_tsc_khz().ok()) {
                cmdline_text.push_str(&format!(" probe.tsc_khz={khz}"));
            }
        }
        let cmdline = boot::build_cmdline(&cmdline_text)?;
        let loaded = boot::load_kernel(
            &mem,
            mem_bytes,
            &cfg.kernel,
            cfg.initrd.as_deref(),
            &cmdline,
        )?;
        if let Some(bsp) = vcpus.first() {
            regs::set_entry_state(bsp, &mem, loaded.entry)?;
        }
        // Linux finds its APs (and the IOAPIC) through the MP table.
        boot::mptable::write(&mem, cfg.vcpus)
            .map_err(|e| BootError::BootParams(format!("MP table: {e}")))?;

        let bus = Arc::new(bus);
        let shared = Arc::new(VmShared::new().map_err(setup("exit eventfd"))?);

        // Every host resource is open: drop what is not needed before the vCPUs start.
        sandbox.drop_privileges()?;
        signals::install_vcpu_kick_handler().map_err(setup("vCPU kick signal handler"))?;
        let _guard =
            signals::route_stop_signals(&shared.exit_evt).map_err(setup("stop signal handlers"))?;
        let started = Instant::now();
        let mut threads = Vec::with_capacity(vcpus.len());
        for (index, fd) in vcpus.into_iter().enumerate() {
            let start = sandbox.vcpu_start();
            match vcpu::spawn(
                index as u8,
                fd,
                bus.clone(),
                shared.clone(),
                cfg.vcpu_nice,
                start,
            ) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop_vcpus(&shared, threads, VmExit::Internal("setup failed".into()));
                    return Err(setup("a vCPU thread")(e));
                }
            }
        }
        if let Err(e) = sandbox.lock_vmm_thread() {
            stop_vcpus(&shared, threads, VmExit::Internal("setup failed".into()));
            return Err(e.into());
        }

        let exit = wait_for_exit(&shared, &bus, &threads, cfg.timeout, started);
        let exit = stop_vcpus(&shared, threads, exit);
        bus.flush_console();
        // The vCPU threads are joined: dropping the bus stops the device workers (flushing
        // pcap files) while guest memory is still mapped.
        drop(bus);
        drop(mem);
        sandbox.finish();
        if let (true, Some(m)) = (cfg.net.stats, net_metrics) {
            eprintln!("ringfence: net stats: {}", crate::net::stats_json(&m));
        }
        Ok(exit)
    }
}

fn open_console(console: Console) -> Result<ConsoleSink, VmError> {
    Ok(match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::Sink(w) => w,
        Console::File(path) => {
            let file = File::create(&path).map_err(|source| VmError::ConsoleFile {
                path: path.clone(),
                source,
            })?;
            Box::new(LineWriter::new(file))
        }
    })
}

fn create_memory(vm: &VmFd, mem_bytes: u64, mib: u64) -> Result<GuestMemoryMmap, VmError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmError::Memory {
        mib,
        reason: e.to_string(),
    })?;
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Memory {
                mib,
                reason: e.to_string(),
            })?;
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap of `region.len()` bytes owned by `mem`.
        unsafe { privileges::exclude_from_core_dumps(host_addr, region.len() as usize) }.map_err(
            |e| VmError::Memory {
                mib,
                reason: format!("MADV_DONTDUMP: {e}"),
            },
        )?;
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM's use of it:
        // `Vm::run` keeps `mem` alive until every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

/// Blocks until a vCPU reports an exit, a stop signal arrives, or the timeout expires.
fn wait_for_exit(
    shared: &VmShared,
    bus: &IoBus,
    threads: &[JoinHandle<()>],
    timeout: Option<Duration>,
    started: Instant,
) -> VmExit {
    let mut next_halt_check = Instant::now() + HALT_CHECK_INTERVAL;
    loop {
        if let Some(exit) = shared.exit() {
            return exit;
        }
        if let Some(sig) = signals::stop_signal() {
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
        if now >= next_halt_check {
            bus.flush_console();
            kick(threads);
            next_halt_check = now + HALT_CHECK_INTERVAL;
        }
        let mut wait = next_halt_check.saturating_duration_since(now);
        if let Some(limit) = timeout {
            wait = wait.min((started + limit).saturating_duration_since(now));
        }
        poll_readable(shared.exit_evt.as_raw_fd(), wait);
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
