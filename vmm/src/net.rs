//! Guest networking as the VMM sees it: which backend (`--net`), and the virtio-net device on a
//! virtio-mmio window wired to KVM (ioeventfd per queue, irqfd per device) and announced on the
//! kernel command line the way Linux reads it (`virtio_mmio.device=4K@BASE:IRQ`).

use std::path::PathBuf;
use std::str::FromStr;

use devices::net::backend::fault::{FaultBackend, FaultSpec, FaultSpecError};
use devices::net::backend::tap::TapBackend;
use devices::net::backend::user::{StackControl, StackTask, UserBackend};
use devices::net::backend::NetBackend;
use devices::net::{Net, NetConfig};
use devices::virtio::mmio::MmioTransport;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::io::MmioDevice;
use crate::kvm::KvmError;
use crate::net_policy::PolicyHandle;
use crate::net_user::{UserNetError, UserNetSettings};

/// Environment variable that wraps the backend in the test-only fault hook (design §8).
pub const TEST_FAULTS_ENV: &str = "RINGFENCE_TEST_FAULTS";

/// The `--net` choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendSpec {
    /// No network device.
    None,
    /// The userspace netstack (no tap, no root).
    User,
    /// A tap interface (created if missing), kernel datapath.
    Tap(String),
}

impl FromStr for NetBackendSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(NetBackendSpec::None),
            "user" => Ok(NetBackendSpec::User),
            _ => match s.strip_prefix("tap:") {
                Some(name) if !name.is_empty() && name.len() < 16 => {
                    Ok(NetBackendSpec::Tap(name.to_string()))
                }
                Some(_) => Err(format!(
                    "bad --net {s:?}: a tap name must have 1 to 15 characters, e.g. tap:rf0"
                )),
                None => Err(format!(
                    "bad --net {s:?}: expected user, none or tap:IFNAME"
                )),
            },
        }
    }
}

/// Network settings of a VM.
#[derive(Clone, Debug)]
pub struct NetSettings {
    /// Which backend.
    pub backend: NetBackendSpec,
    /// Record every frame into this pcap file.
    pub pcap: Option<PathBuf>,
    /// Bytes of each frame the pcap file keeps (`None`: whole frames).
    pub pcap_snaplen: Option<u32>,
    /// The guest's MAC address (a random locally administered one when `None`).
    pub mac: Option<[u8; 6]>,
    /// Settings of the `user` backend (pools, DNS, published ports, limits, policy).
    pub user: UserNetSettings,
    /// Print the device's counters as one JSON line on stderr when the VM stops.
    pub stats: bool,
}

impl Default for NetSettings {
    fn default() -> Self {
        NetSettings {
            backend: NetBackendSpec::None,
            pcap: None,
            pcap_snaplen: None,
            mac: None,
            user: UserNetSettings::default(),
            stats: false,
        }
    }
}

/// Errors setting up the network device.
#[derive(Debug, thiserror::Error)]
pub enum NetSetupError {
    /// The tap could not be opened.
    #[error("--net tap:{name}: {reason}")]
    Tap {
        /// Interface name.
        name: String,
        /// What failed and what to do.
        reason: String,
    },
    /// The device could not be created (pcap file, queue size).
    #[error("virtio-net: {0}")]
    Device(String),
    /// The `user` backend's settings are wrong, or a published port is taken.
    #[error(transparent)]
    User(#[from] UserNetError),
    /// `RINGFENCE_TEST_FAULTS` is set but malformed.
    #[error("{TEST_FAULTS_ENV}: {reason} (unset it to run without test faults)")]
    TestFaults {
        /// The variable's value.
        value: String,
        /// What is wrong with it, naming the value.
        reason: String,
    },
    /// Registering eventfds with KVM failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// A network device ready to be placed on the bus.
pub struct AttachedNet {
    /// Guest-physical base of the window.
    pub base: u64,
    /// The device, as the bus takes it.
    pub device: Box<dyn MmioDevice>,
    /// The command-line word that announces it to the guest.
    pub cmdline: String,
    /// The device's counters (live; read them after the VM stops for final figures).
    pub metrics: std::sync::Arc<devices::net::NetMetrics>,
    /// Starts and stops pcap captures at run time.
    pub capture: std::sync::Arc<devices::net::pcap::CaptureSwitch>,
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the valid buffer `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        let pid = std::process::id().to_le_bytes();
        mac[2..6].copy_from_slice(&pid);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// The opened backend, the MAC the device will use, and (for `user`) the live policy.
pub struct PreparedNet {
    /// The backend the device worker drives.
    pub backend: Box<dyn NetBackend>,
    /// The guest MAC.
    pub mac: [u8; 6],
    /// The policy handle of the `user` backend (for runtime changes).
    pub policy: Option<PolicyHandle>,
    /// Link MTU the device announces (`user`: the netstack's); `None` = not announced.
    pub mtu: Option<u16>,
    /// The TLS proxy of the `user` backend with `--tls-intercept`.
    pub intercept: Option<crate::tls_intercept::PreparedIntercept>,
}

/// Opens the backend before anything else is created, so a bad `--net`, a taken published
/// port or a wrong policy fails fast, before boot. `control`: the embedding API's queue of
/// netstack tasks (used by the `user` backend only).
pub fn prepare(
    settings: &NetSettings,
    control: Option<(&StackControl, std::sync::mpsc::Receiver<StackTask>)>,
) -> Result<Option<PreparedNet>, NetSetupError> {
    let faults = test_faults()?;
    let prepared = prepare_backend(settings, control)?;
    Ok(match (faults, prepared) {
        (Some(spec), Some(p)) => {
            // Never on silently: it copies frames and perturbs the guest's traffic.
            eprintln!("ringfence: TEST FAULTS ENABLED: {spec} ({TEST_FAULTS_ENV})");
            Some(PreparedNet {
                backend: Box::new(FaultBackend::new(p.backend, spec)),
                ..p
            })
        }
        (_, prepared) => prepared,
    })
}

/// The fault hook's settings from [`TEST_FAULTS_ENV`], read once; `None` when it is unset.
fn test_faults() -> Result<Option<FaultSpec>, NetSetupError> {
    match std::env::var(TEST_FAULTS_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            let value = v.to_string_lossy().into_owned();
            Err(NetSetupError::TestFaults {
                reason: format!("{value:?} is not valid UTF-8"),
                value,
            })
        }
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e: FaultSpecError| NetSetupError::TestFaults {
                value: v.clone(),
                reason: e.to_string(),
            }),
    }
}

/// Opens the backend `settings` names (without the test fault hook).
fn prepare_backend(
    settings: &NetSettings,
    control: Option<(&StackControl, std::sync::mpsc::Receiver<StackTask>)>,
) -> Result<Option<PreparedNet>, NetSetupError> {
    let mac = settings.mac.unwrap_or_else(random_mac);
    match &settings.backend {
        NetBackendSpec::None => Ok(None),
        NetBackendSpec::Tap(name) => {
            let tap = TapBackend::open(name).map_err(|e| NetSetupError::Tap {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            Ok(Some(PreparedNet {
                backend: Box::new(tap),
                mac,
                policy: None,
                mtu: None,
                intercept: None,
            }))
        }
        NetBackendSpec::User => {
            let (stack, policy, intercept) = crate::net_user::build(&settings.user, mac)?;
            let mtu = Some(stack.mtu());
            let mut backend = UserBackend::new(stack).rejudge_on(policy.change_signal());
            if let Some((control, tasks)) = control {
                backend = backend.controlled_by(control, tasks).map_err(|e| {
                    NetSetupError::Device(format!("cannot create the control eventfd: {e}"))
                })?;
            }
            Ok(Some(PreparedNet {
                backend: Box::new(backend),
                mac,
                policy: Some(policy),
                mtu,
                intercept,
            }))
        }
    }
}

/// Creates virtio-net device `index` over the prepared backend, wires its eventfds into `vm`.
/// `pool`: the shared device thread to serve it on (`None`: a worker thread of its own,
/// started by `launcher`).
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    index: u32,
    prepared: PreparedNet,
    settings: &NetSettings,
    launcher: devices::thread::ThreadLauncher,
    pool: Option<devices::pool::DeviceThread>,
) -> Result<AttachedNet, NetSetupError> {
    let config = NetConfig {
        mac: prepared.mac,
        pcap: settings.pcap.clone(),
        pcap_snaplen: settings.pcap_snaplen,
        mtu: prepared.mtu,
        launcher,
        pool,
        ..Default::default()
    };
    let net =
        Net::new(config, prepared.backend).map_err(|e| NetSetupError::Device(e.to_string()))?;
    let metrics = net.metrics();
    let capture = net.capture_switch();
    let transport = MmioTransport::new(mem.clone(), Box::new(net))
        .map_err(|e| NetSetupError::Device(e.to_string()))?;
    let names = crate::virtio_window::WiringNames {
        ioevent: "KVM_IOEVENTFD (virtio-net queue notify)",
        irqfd: "KVM_IRQFD (virtio-net)",
    };
    let placed = crate::virtio_window::place(vm, transport, index, names, ())?;
    Ok(AttachedNet {
        base: placed.base,
        device: placed.device,
        cmdline: placed.cmdline,
        metrics,
        capture,
    })
}

/// The counters of a stopped device as one JSON object (`--net-stats`).
pub fn stats_json(metrics: &devices::net::NetMetrics, extra: Vec<(&'static str, u64)>) -> String {
    let mut map: serde_json::Map<String, serde_json::Value> = metrics
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::from(v)))
        .chain(extra.into_iter().map(|(k, v)| (k.to_string(), v.into())))
        .collect();
    let acked = devices::net::NetMetrics::get(&metrics.features_acked);
    map.insert("features".into(), feature_names(acked).into());
    serde_json::Value::Object(map).to_string()
}

/// Names of the virtio-net feature bits set in `bits` (virtio 1.2 §5.1.3, §6), for reports.
pub fn feature_names(bits: u64) -> Vec<&'static str> {
    use devices::net::features::*;
    use devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
    [
        (VIRTIO_NET_F_CSUM, "CSUM"),
        (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
        (VIRTIO_NET_F_MTU, "MTU"),
        (VIRTIO_NET_F_MAC, "MAC"),
        (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
        (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
        (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
        (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
        (VIRTIO_NET_F_STATUS, "STATUS"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VIRTIO_F_VERSION_1, "VERSION_1"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & (1u64 << bit) != 0)
    .map(|(_, name)| name)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_specs_parse_or_explain() {
        assert_eq!(
            "user".parse::<NetBackendSpec>().unwrap(),
            NetBackendSpec::User
        );
        assert_eq!(
            "none".parse::<NetBackendSpec>().unwrap(),
            NetBackendSpec::None
        );
        assert_eq!(
            "tap:rf0".parse::<NetBackendSpec>().unwrap(),
            NetBackendSpec::Tap("rf0".into())
        );
        assert!("tap:"
            .parse::<NetBackendSpec>()
            .unwrap_err()
            .contains("1 to 15"));
        assert!("bridge"
            .parse::<NetBackendSpec>()
            .unwrap_err()
            .contains("expected user"));
    }

    #[test]
    fn feature_bits_are_named() {
        assert_eq!(feature_names(0), Vec::<&str>::new());
        assert_eq!(
            feature_names((1 << 0) | (1 << 15) | (1 << 29) | (1 << 32)),
            vec!["CSUM", "MRG_RXBUF", "EVENT_IDX", "VERSION_1"]
        );
    }

    #[test]
    fn random_macs_are_local_unicast() {
        let m = random_mac();
        assert_eq!(m[0] & 0x03, 0x02);
    }
}
