//! The JSON bodies of the Firecracker API subset (`firecracker.yaml`'s definitions), as
//! serde types. Unknown fields are refused, as Firecracker refuses them.

use serde::{Deserialize, Serialize};

/// `GET/PUT /machine-config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs, 1–32 (ringfence's own limit may be lower).
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading: only `false` is supported.
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking (for snapshots): only `false` is supported.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// CPU template: only `None` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Huge pages: only `None` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        // Firecracker's defaults before any PUT.
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
        }
    }
}

/// `PUT /boot-source`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The kernel (a PVH ELF or a bzImage).
    pub kernel_image_path: String,
    /// The initrd.
    #[serde(default)]
    pub initrd_path: Option<String>,
    /// The kernel command line.
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// `PUT /network-interfaces/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Must match the path's id.
    pub iface_id: String,
    /// A tap on the host gives `--net tap:NAME`; any other name (or none) the user netstack.
    #[serde(default)]
    pub host_dev_name: Option<String>,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// MTU announced to the guest.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Rate limiters: accepted only when absent or null (not supported).
    #[serde(default)]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// See `rx_rate_limiter`.
    #[serde(default)]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// `PUT /actions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// `InstanceStart`, `SendCtrlAltDel` or `FlushMetrics`.
    pub action_type: String,
}

/// `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File or named pipe the log goes to.
    #[serde(default)]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off` (any case).
    #[serde(default)]
    pub level: Option<String>,
    /// Accepted, not used.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Accepted, not used.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Accepted, not used.
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File or named pipe `FlushMetrics` writes one JSON line to.
    pub metrics_path: String,
}

/// `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// `ringfence`.
    pub app_name: String,
    /// The instance id (`--id`, default `anonymous-instance`).
    pub id: String,
    /// `Not started` or `Running`.
    pub state: String,
    /// ringfence's version.
    pub vmm_version: String,
}

/// Every error body: `{"fault_message": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What went wrong and what to do.
    pub fault_message: String,
}

/// `--config-file`: the parts of Firecracker's full VM configuration this server knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {
    /// `boot-source`.
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    /// `machine-config`.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    /// `network-interfaces`.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// `logger`.
    #[serde(default)]
    pub logger: Option<Logger>,
    /// `metrics`.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// `drives`: refused unless empty (no virtio-blk yet).
    #[serde(default)]
    pub drives: Vec<serde_json::Value>,
    /// `vsock`: refused unless absent (no virtio-vsock yet).
    #[serde(default)]
    pub vsock: Option<serde_json::Value>,
    /// ringfence's extension: a policy document.
    #[serde(rename = "network-policy", default)]
    pub network_policy: Option<serde_json::Value>,
}
