//! Building a VM: validate, create, load, start.
//!
//! [`Vm::start`] opens KVM, creates the VM with an in-kernel irqchip and PIT, maps guest
//! memory, loads the kernel, builds the vCPUs and devices, and hands all of it to a
//! [`VmHandle`] (see [`crate::handle`]), whose supervisor thread runs and tears it down.
//! [`Vm::run`] (the whole of `ringfence run`) is `start()?.wait()`.

use std::fs::File;
use std::io::LineWriter;
use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootError};
use crate::config::{self, ConfigError, Console, VmConfig};
use crate::embed::GuestNet;
use crate::exit::VmExit;
use crate::handle::{Parts, VmHandle};
use crate::io::serial::{ConsoleSink, SerialConsole};
use crate::io::IoBus;
use crate::kvm::{self, regs, KvmError, KvmHost};
use crate::layout::{self, KVM_TSS_ADDRESS, SERIAL_IRQ};
use crate::sandbox::{privileges, CapabilityPlan, Sandbox};

pub use crate::net_control::{NetControl, NetControlError};

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
    /// A drive could not be set up.
    #[error(transparent)]
    Drive(#[from] crate::block::DriveError),
    /// The vsock device could not be set up (e.g. its socket path is in use).
    #[error(transparent)]
    Vsock(#[from] crate::vsock::VsockSetupError),
    /// The host's address pool for this VM is full.
    #[error(transparent)]
    Addresses(#[from] crate::host::AddressPoolError),
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

/// A VM ready to run.
pub struct Vm {
    config: VmConfig,
    net: NetControl,
    route_stop_signals: bool,
    guest_net: GuestNet,
    net_tasks: std::sync::mpsc::Receiver<devices::net::backend::user::StackTask>,
    /// The shared device thread to serve the network device on (set by a `Host`).
    device_thread: Option<devices::pool::DeviceThread>,
    /// Subnets from a `Host`'s pools, held until the VM is torn down.
    addresses: Option<crate::host::AddressLease>,
}

impl Vm {
    /// Takes a configuration; nothing is created until [`Vm::start`] or [`Vm::run`].
    pub fn new(config: VmConfig) -> Self {
        let (guest_net, net_tasks) = GuestNet::new();
        Vm {
            config,
            net: NetControl::default(),
            route_stop_signals: false,
            guest_net,
            net_tasks,
            device_thread: None,
            addresses: None,
        }
    }

    /// The configuration, for a `Host` to fill in what it hands out.
    pub(crate) fn config_mut(&mut self) -> &mut VmConfig {
        &mut self.config
    }

    /// Holds `lease` (the subnets the configuration now names) until the VM is torn down.
    pub(crate) fn with_addresses(mut self, lease: crate::host::AddressLease) -> Self {
        self.addresses = Some(lease);
        self
    }

    /// Serves the network device on `thread` instead of a worker thread of its own.
    pub(crate) fn on_device_thread(mut self, thread: devices::pool::DeviceThread) -> Self {
        self.device_thread = Some(thread);
        self
    }

    /// Whether the VM will have the user-mode network (the embedding API's handles need it).
    pub(crate) fn has_user_net(&self) -> bool {
        self.config.net.backend == crate::net::NetBackendSpec::User
    }

    /// The embedding side of the VM's network.
    pub(crate) fn guest_net(&self) -> &GuestNet {
        &self.guest_net
    }

    /// A handle to change the network policy while the VM runs (on another thread); the same
    /// as [`VmHandle::net_control`] after [`Vm::start`].
    pub fn net_control(&mut self) -> NetControl {
        self.net.clone()
    }

    /// Lets SIGINT, SIGTERM and SIGHUP stop this VM (with [`VmExit::Signal`]) until it ends.
    /// For a program running one VM (the `ringfence` CLI); a library with several VMs per
    /// process leaves signals alone, which is the default. Only one running VM per process
    /// can have them: [`Vm::start`] fails for a second one.
    ///
    /// ```no_run
    /// # let config = ringfence::VmConfig::new("vmlinux");
    /// // Ctrl-C ends the VM with VmExit::Signal(2) instead of killing the process.
    /// let exit = ringfence::Vm::new(config).route_stop_signals().run()?;
    /// std::process::exit(exit.status());
    /// # Ok::<(), ringfence::VmError>(())
    /// ```
    pub fn route_stop_signals(mut self) -> Self {
        self.route_stop_signals = true;
        self
    }

    /// Builds the VM, runs it to its end and returns why it ended: `start()?.wait()`.
    pub fn run(self) -> Result<VmExit, VmError> {
        Ok(self.start()?.wait())
    }

    /// Builds the VM and starts its vCPUs; returns once the guest runs. The returned
    /// [`VmHandle`] waits for, inspects and stops it; dropping the handle stops the VM.
    /// Nothing process-wide is changed (except the no-op handler of the vCPU kick signal,
    /// `SIGRTMIN`), so a process may run many VMs at once.
    ///
    /// ```no_run
    /// use ringfence::{Vm, VmConfig};
    ///
    /// let vms: Vec<_> = (0..4)
    ///     .map(|i| {
    ///         let mut config = VmConfig::new("probe.elf");
    ///         config.cmdline = format!("probe.scenario=exit:{i}");
    ///         Vm::new(config).start()
    ///     })
    ///     .collect::<Result<_, _>>()?;
    /// for vm in &vms {
    ///     println!("{}", vm.wait());
    /// }
    /// # Ok::<(), ringfence::VmError>(())
    /// ```
    pub fn start(self) -> Result<VmHandle, VmError> {
        let user_net = self.has_user_net();
        let Vm {
            config: cfg,
            net,
            route_stop_signals,
            guest_net,
            net_tasks,
            device_thread,
            addresses,
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
        let net_backend = crate::net::prepare(&cfg.net, Some((guest_net.control(), net_tasks)))?;
        let drives = crate::block::prepare(&cfg.drives)?;
        // Bound before boot so a path in use is reported now (removed again at teardown).
        let vsock = cfg.vsock.as_ref().map(crate::vsock::bind).transpose()?;

        let vm = host.create_vm()?;
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
        let mut capture = None;
        let mut policy = None;
        let mut tls = None;
        let mut initrd_files = Vec::new();
        // Before any thread starts (the launcher for device workers is the first).
        // A device on a shared thread starts no worker thread; the TLS proxy's thread is
        // always started through the launcher, so it runs under the worker filter.
        let with_workers = !drives.is_empty()
            || vsock.is_some()
            || net_backend
                .as_ref()
                .is_some_and(|p| device_thread.is_none() || p.intercept.is_some());
        let mut sandbox = Sandbox::start(cfg.seccomp, caps, with_workers)?;
        if let Some(bound) = &vsock {
            sandbox.allow_vmm_unlink_in(bound.dir_fd())?;
        }
        if let Some(mut prepared) = net_backend {
            policy = prepared.policy.clone();
            let launcher = sandbox.worker_launcher();
            if let Some(intercept) = prepared.intercept.take() {
                let worker = intercept.worker;
                let thread = launcher
                    .launch(
                        "rf-tls-proxy",
                        Box::new(move || {
                            if let Err(e) = worker.run() {
                                eprintln!("ringfence: the TLS proxy stopped: {e}");
                            }
                        }),
                    )
                    .map_err(setup("the TLS proxy thread"))?;
                initrd_files = intercept.guest_files;
                tls = Some(crate::handle::TlsParts {
                    proxy: intercept.proxy,
                    thread: Some(thread),
                });
            }
            let dev =
                crate::net::attach(&vm, &mem, 0, prepared, &cfg.net, launcher, device_thread)?;
            bus.add_mmio(dev.base, layout::VIRTIO_MMIO_WINDOW, dev.device);
            net_metrics = Some(dev.metrics);
            capture = Some(dev.capture);
            cmdline_text = format!("{} {}", dev.cmdline, cmdline_text);
        }
        // Drives go on their windows and, after the net device's word, onto the command line
        // in window order (Linux names them vda, vdb, ... in that order); vsock after them.
        let mut drive_words = Vec::with_capacity(drives.len() + 2);
        let mut drive_swaps = Vec::with_capacity(drives.len());
        for (n, drive) in drives.into_iter().enumerate() {
            let id = drive.settings.id.clone();
            let dev = crate::block::attach(&vm, &mem, n, drive, sandbox.worker_launcher())?;
            bus.add_mmio(dev.base, layout::VIRTIO_MMIO_WINDOW, dev.device);
            drive_words.push(dev.cmdline);
            drive_swaps.push((id, dev.swap));
        }
        if let (Some(settings), Some(bound)) = (cfg.vsock.as_ref(), vsock) {
            let window = crate::vsock::vsock_window(cfg.drives.len());
            let launcher = sandbox.worker_launcher();
            let dev = crate::vsock::attach(&vm, &mem, window, settings, bound, launcher)?;
            bus.add_mmio(dev.base, layout::VIRTIO_MMIO_WINDOW, dev.device);
            drive_words.push(dev.cmdline);
        }
        drive_words.extend(crate::block::root_cmdline(&cfg.drives));
        if !drive_words.is_empty() {
            cmdline_text = insert_after_virtio_words(&cmdline_text, &drive_words.join(" "));
        }
        if cfg.pass_tsc_khz && !cmdline_text.contains("probe.tsc_khz=") {
            if let Some(khz) = vcpus.first().and_then(|v| v.get_tsc_khz().ok()) {
                cmdline_text.push_str(&format!(" probe.tsc_khz={khz}"));
            }
        }
        let cmdline = boot::build_cmdline(&cmdline_text)?;
        let appended = if initrd_files.is_empty() {
            Vec::new()
        } else {
            boot::initrd::cpio_newc(&initrd_files)
        };
        let initrd = cfg.initrd.as_deref().map(|path| boot::initrd::Initrd {
            path,
            appended: &appended,
        });
        let loaded = boot::load_kernel(&mem, mem_bytes, &cfg.kernel, initrd, &cmdline)?;
        if let Some(bsp) = vcpus.first() {
            regs::set_entry_state(bsp, &mem, loaded.entry)?;
        }
        // Linux finds its APs (and the IOAPIC) through the MP table.
        boot::mptable::write(&mem, cfg.vcpus)
            .map_err(|e| BootError::BootParams(format!("MP table: {e}")))?;

        // Every host resource is open: drop what is not needed before the vCPUs start.
        sandbox.drop_privileges()?;
        let parts = Parts {
            vm,
            host,
            mem,
            bus: Arc::new(bus),
            vcpus,
            vcpu_nice: cfg.vcpu_nice,
            timeout: cfg.timeout,
            net_metrics,
            print_net_stats: cfg.net.stats,
            policy,
            route_stop_signals,
            guest_net: user_net.then_some(guest_net),
            capture,
            sandbox,
            tls,
            addresses,
            drives: drive_swaps,
        };
        VmHandle::spawn(parts, net)
    }
}

/// `words` inserted into `cmdline` after its leading `virtio_mmio.device=` words (the devices
/// announced so far), so devices stay in window order ahead of the user's words.
fn insert_after_virtio_words(cmdline: &str, words: &str) -> String {
    let mut end = 0;
    loop {
        let rest = &cmdline[end..];
        let word = rest.trim_start_matches(' ');
        if !word.starts_with("virtio_mmio.device=") {
            break;
        }
        end += rest.len() - word.len() + word.find(' ').unwrap_or(word.len());
    }
    let (head, tail) = cmdline.split_at(end);
    [head.trim(), words, tail.trim_start()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
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
        // Guest RAM stays out of the VMM's core dumps: it may hold the guest's secrets, and
        // a supervisor of many VMs would otherwise dump all of them. The flag also keeps the
        // mapping from merging with the allocator's anonymous mappings, so `/proc/PID/smaps`
        // shows it as VMAs of its own (flag `dd`), which the density benchmark relies on.
        // SAFETY: the region is a live mmap of `region.len()` bytes owned by `mem`.
        unsafe { privileges::exclude_from_core_dumps(host_addr, region.len() as usize) }.map_err(
            |e| VmError::Memory {
                mib,
                reason: format!("MADV_DONTDUMP: {e}"),
            },
        )?;
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM's use of it:
        // the VM's supervisor keeps `mem` alive until every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::insert_after_virtio_words;

    #[test]
    fn drive_words_follow_the_devices_already_announced() {
        assert_eq!(
            insert_after_virtio_words("virtio_mmio.device=4K@0xd0000000:5 console=ttyS0", "D"),
            "virtio_mmio.device=4K@0xd0000000:5 D console=ttyS0"
        );
        assert_eq!(insert_after_virtio_words("quiet", "D"), "D quiet");
        assert_eq!(insert_after_virtio_words("", "D"), "D");
        assert_eq!(
            insert_after_virtio_words("virtio_mmio.device=a -- x  y", "D"),
            "virtio_mmio.device=a D -- x  y",
            "the user's words are kept as written"
        );
    }
}
