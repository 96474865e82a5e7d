//! Many VMs in one process: a [`Host`] owns what its VMs share (issue 18 item 3).
//!
//! - **Device threads.** By default a host starts one shared device thread per core
//!   ([`DeviceThreads::Shared`]); each is one io_uring loop serving the virtqueues and the
//!   netstack of many VMs (`devices::pool`), so a VM adds no thread for its network device and
//!   no seccomp launcher thread. Each VM is placed on the thread serving the fewest VMs when it
//!   starts and stays there. [`DeviceThreads::PerVm`] keeps the thread per device that
//!   [`Vm::start`] uses, for comparison.
//! - **Address pools.** Each VM with `--net user` takes a /30 of its IPv4 pool and a /64 of its
//!   IPv6 pool that no other running VM of this host has; they come back when the VM has been
//!   torn down, or at once when its start fails.
//!
//! [`Vm::start`] without a host is unchanged: a device thread per VM and the first /30 and /64
//! of the pools (each VM has its own netstack, so VMs of different hosts or none can share
//! addresses without meeting).
//!
//! The shared threads run under the device worker's seccomp filter and keep only
//! `CAP_NET_RAW`, like a worker thread of one VM. They end when the host and every VM started
//! through it are gone. This module never touches a VM's devices; it only hands the device a
//! thread and the netstack its indices.

mod addresses;

use std::net::{Ipv4Addr, Ipv6Addr};

use devices::pool::{DeviceThread, DeviceThreadError};

pub use addresses::{AddressLease, AddressPoolError};

use crate::net::NetBackendSpec;
use crate::sandbox::{self, SandboxError, SeccompMode};
use crate::vm::{Vm, VmError};
use crate::VmHandle;

/// Which threads serve the VMs' devices.
///
/// ```
/// use ringfence::host::DeviceThreads;
///
/// assert_eq!(DeviceThreads::default(), DeviceThreads::Shared(0)); // one per core
/// let compare_with = DeviceThreads::PerVm; // what Vm::start does
/// # let _ = compare_with;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceThreads {
    /// This many shared device threads (0: one per core the process may use).
    Shared(usize),
    /// A thread per device, started when the guest activates it (what [`Vm::start`] does).
    PerVm,
}

impl Default for DeviceThreads {
    fn default() -> Self {
        DeviceThreads::Shared(0)
    }
}

/// How a [`Host`] is set up.
///
/// ```
/// use ringfence::host::{DeviceThreads, HostConfig};
/// use ringfence::sandbox::SeccompMode;
///
/// let config = HostConfig {
///     device_threads: DeviceThreads::Shared(4),
///     seccomp: SeccompMode::On,
///     device_thread_nice: 0,
/// };
/// assert_eq!(HostConfig::default().seccomp, SeccompMode::On);
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HostConfig {
    /// Shared device threads (the default: one per core) or a thread per device.
    pub device_threads: DeviceThreads,
    /// Whether the shared device threads run under the device worker's seccomp filter (on by
    /// default; each VM's own threads follow its `VmConfig::seccomp`).
    pub seccomp: SeccompMode,
    /// Nice value of the shared device threads (default 0, the process's priority). A shared
    /// thread does the device work of many VMs but gets the CPU share of one thread; a
    /// negative value (needs `CAP_SYS_NICE`) gives it more, against busy vCPUs and every other
    /// process of the host, which is why it is opt-in (docs/decisions.md). Ignored with
    /// [`DeviceThreads::PerVm`].
    pub device_thread_nice: i8,
}

/// Why a [`Host`] could not be set up.
///
/// ```
/// use ringfence::host::{Host, HostConfig, HostError};
///
/// match Host::new(HostConfig::default()) {
///     Ok(host) => println!("{} device threads", host.device_threads()),
///     Err(HostError::Sandbox(e)) => eprintln!("seccomp: {e}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A shared device thread could not be started.
    #[error(transparent)]
    DeviceThread(#[from] DeviceThreadError),
    /// The seccomp filters could not be prepared, or `Host::new` ran on a filtered thread.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Shared resources of many VMs in one process: device threads and address pools.
///
/// `Send + Sync`; start VMs from any thread with [`Host::start`]. Dropping the host is fine
/// while its VMs run: they keep their device thread until they stop.
///
/// ```no_run
/// use ringfence::host::{Host, HostConfig};
/// use ringfence::{Vm, VmConfig};
///
/// let host = Host::new(HostConfig::default())?; // one device thread per core
/// let vms: Vec<_> = (0..8)
///     .map(|_| {
///         let mut config = VmConfig::new("probe.elf");
///         config.net.backend = ringfence::net::NetBackendSpec::User;
///         host.start(Vm::new(config))
///     })
///     .collect::<Result<_, _>>()?;
/// for vm in &vms {
///     println!("{}", vm.wait());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Host {
    threads: Vec<DeviceThread>,
    pools: addresses::AddressPools,
    mode: DeviceThreads,
}

impl Host {
    /// Starts the shared device threads (none with [`DeviceThreads::PerVm`]). Call it from a
    /// thread that runs under no ringfence filter (as for [`Vm::start`]).
    ///
    /// ```
    /// use ringfence::host::{DeviceThreads, Host, HostConfig};
    ///
    /// let host = Host::new(HostConfig {
    ///     device_threads: DeviceThreads::Shared(2),
    ///     ..HostConfig::default()
    /// })?;
    /// assert_eq!(host.device_threads(), 2);
    /// assert_eq!(host.vms_per_device_thread(), vec![0, 0]);
    /// # Ok::<(), ringfence::host::HostError>(())
    /// ```
    pub fn new(config: HostConfig) -> Result<Host, HostError> {
        sandbox::ensure_unfiltered_thread()?;
        let count = match config.device_threads {
            DeviceThreads::PerVm => 0,
            DeviceThreads::Shared(0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            DeviceThreads::Shared(n) => n,
        };
        let threads = if count == 0 {
            Vec::new()
        } else {
            let launcher =
                sandbox::device_thread_launcher(config.seccomp, config.device_thread_nice)?;
            (0..count)
                .map(|i| DeviceThread::spawn(&format!("rf-devices-{i}"), &launcher))
                .collect::<Result<_, _>>()?
        };
        Ok(Host {
            threads,
            pools: addresses::AddressPools::default(),
            mode: config.device_threads,
        })
    }

    /// Builds and starts `vm` as [`Vm::start`] does, with a /30 and /64 of its pools no other
    /// running VM of this host has, and its network device on the least busy shared device
    /// thread (unless the host runs a thread per device).
    ///
    /// Fails with [`VmError::Addresses`] when the VM's pool is full; a VM that fails to start
    /// for any reason gives its addresses back before this returns.
    ///
    /// ```no_run
    /// # let host = ringfence::host::Host::new(Default::default())?;
    /// let mut config = ringfence::VmConfig::new("probe.elf");
    /// config.cmdline = "probe.scenario=exit:0".into();
    /// let vm = host.start(ringfence::Vm::new(config))?;
    /// assert_eq!(vm.wait().guest_status(), Some(0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(&self, vm: Vm) -> Result<VmHandle, VmError> {
        let mut vm = vm;
        if vm.has_user_net() {
            let user = &mut vm.config_mut().net.user;
            let lease = self.pools.lease(user.ipv4_pool, user.ipv6_pool)?;
            user.ipv4_index = lease.ipv4_index();
            user.ipv6_index = lease.ipv6_index();
            vm = vm.with_addresses(lease);
        }
        if vm.config_mut().net.backend != NetBackendSpec::None {
            if let Some(thread) = self.least_busy() {
                vm = vm.on_device_thread(thread.clone());
            }
        }
        vm.start()
    }

    /// How many shared device threads the host runs (0 with [`DeviceThreads::PerVm`]).
    ///
    /// ```
    /// use ringfence::host::{DeviceThreads, Host, HostConfig};
    ///
    /// let host = Host::new(HostConfig { device_threads: DeviceThreads::PerVm, ..Default::default() })?;
    /// assert_eq!(host.device_threads(), 0);
    /// # Ok::<(), ringfence::host::HostError>(())
    /// ```
    pub fn device_threads(&self) -> usize {
        self.threads.len()
    }

    /// The setting the host was made with.
    ///
    /// ```
    /// use ringfence::host::{DeviceThreads, Host};
    ///
    /// let host = Host::new(Default::default())?;
    /// assert_eq!(host.mode(), DeviceThreads::Shared(0));
    /// # Ok::<(), ringfence::host::HostError>(())
    /// ```
    pub fn mode(&self) -> DeviceThreads {
        self.mode
    }

    /// Network devices each shared device thread serves now (activated by their guest and
    /// not yet stopped), in thread order.
    ///
    /// ```
    /// use ringfence::host::{DeviceThreads, Host, HostConfig};
    ///
    /// let host = Host::new(HostConfig { device_threads: DeviceThreads::Shared(3), ..Default::default() })?;
    /// assert_eq!(host.vms_per_device_thread(), [0, 0, 0]);
    /// # Ok::<(), ringfence::host::HostError>(())
    /// ```
    pub fn vms_per_device_thread(&self) -> Vec<usize> {
        self.threads.iter().map(DeviceThread::devices).collect()
    }

    /// IPv4 subnets handed out and not yet given back: one per running VM with `--net user`.
    ///
    /// ```
    /// let host = ringfence::host::Host::new(ringfence::host::HostConfig {
    ///     device_threads: ringfence::host::DeviceThreads::PerVm,
    ///     ..Default::default()
    /// })?;
    /// assert_eq!(host.subnets_in_use(), 0);
    /// # Ok::<(), ringfence::host::HostError>(())
    /// ```
    pub fn subnets_in_use(&self) -> usize {
        self.pools.in_use()
    }

    /// The shared thread with the fewest VMs placed on it (each VM's device holds a handle
    /// from its start to its end, whether or not its guest has activated it yet).
    fn least_busy(&self) -> Option<&DeviceThread> {
        self.threads.iter().min_by_key(|t| t.handles())
    }
}

/// The default IPv4 pool, as [`Ipv4Addr`] and prefix length (what a VM without
/// `UserNetSettings::ipv4_pool` takes its /30 from).
///
/// ```
/// assert_eq!(ringfence::host::DEFAULT_IPV4_POOL.1, 12);
/// ```
pub const DEFAULT_IPV4_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 16, 0, 0), 12);

/// The default IPv6 pool (what a VM without `UserNetSettings::ipv6_pool` takes its /64 from).
///
/// ```
/// assert_eq!(ringfence::host::DEFAULT_IPV6_POOL.1, 48);
/// ```
pub const DEFAULT_IPV6_POOL: (Ipv6Addr, u8) =
    (Ipv6Addr::new(0xfd42, 0x6d73, 0x62, 0, 0, 0, 0, 0), 48);
