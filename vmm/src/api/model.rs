//! The JSON bodies of the Firecracker API subset (`firecracker.yaml`'s definitions), as
//! serde types. Unknown fields are refused, as Firecracker refuses them.

use serde::{Deserialize, Deserializer, Serialize};

/// An optional field that may be left out but not given as `null` (the description's types
/// are not nullable).
fn non_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// As [`non_null`], for a field that must be a JSON object (a rate limiter).
fn non_null_object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        v @ serde_json::Value::Object(_) => Ok(Some(v)),
        other => Err(serde::de::Error::custom(format!(
            "expected an object, got {other}"
        ))),
    }
}

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
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_template: Option<String>,
    /// Huge pages: only `None` is supported.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub huge_pages: Option<String>,
    /// The pre-1.0 name of `smt`, still sent by Kata's Firecracker client: only `false`.
    #[serde(default, deserialize_with = "non_null", skip_serializing)]
    pub ht_enabled: Option<bool>,
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
            ht_enabled: None,
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
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub initrd_path: Option<String>,
    /// The kernel command line.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_args: Option<String>,
}

/// `PUT /network-interfaces/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Must match the path's id.
    pub iface_id: String,
    /// A tap on the host gives `--net tap:NAME`; any other name the user netstack (required,
    /// as Firecracker requires it).
    pub host_dev_name: String,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub guest_mac: Option<String>,
    /// MTU announced to the guest.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtu: Option<u16>,
    /// Rate limiters: accepted only when they limit nothing (absent, null or without
    /// buckets, as Kata sends them).
    #[serde(
        default,
        deserialize_with = "non_null_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// See `rx_rate_limiter`.
    #[serde(
        default,
        deserialize_with = "non_null_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub tx_rate_limiter: Option<serde_json::Value>,
    /// Pre-1.0 MMDS switch, still sent by older clients: only `false` (no MMDS).
    #[serde(default, deserialize_with = "non_null", skip_serializing)]
    pub allow_mmds_requests: Option<bool>,
}

/// `PUT /drives/{id}`: a virtio-blk drive backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Must match the path's id.
    pub drive_id: String,
    /// The image file.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub path_on_host: Option<String>,
    /// Adds `root=/dev/vdX` to the kernel command line.
    pub is_root_device: bool,
    /// Read-only drive.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_read_only: Option<bool>,
    /// Root by partition UUID: not supported (name the root in `boot_args`).
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub partuuid: Option<String>,
    /// `Unsafe` or `Writeback`: ringfence always honours the guest's flushes.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_type: Option<String>,
    /// Accepted only when it limits nothing.
    #[serde(
        default,
        deserialize_with = "non_null_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limiter: Option<serde_json::Value>,
    /// `Sync` or `Async`: ringfence's I/O is always asynchronous (io_uring).
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub io_engine: Option<String>,
    /// vhost-user-blk backend: not supported.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket: Option<String>,
}

/// `PATCH /drives/{id}`: a new backing file for a running drive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// Must match the path's id.
    pub drive_id: String,
    /// The new image file.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub path_on_host: Option<String>,
    /// Accepted only when it limits nothing.
    #[serde(
        default,
        deserialize_with = "non_null_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limiter: Option<serde_json::Value>,
}

/// `PUT /vsock`: a virtio-vsock device whose host side is Unix sockets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id, 3 or more.
    pub guest_cid: u64,
    /// The Unix socket host programs connect to (`CONNECT <port>\n`).
    pub uds_path: String,
    /// Deprecated by Firecracker; accepted and ignored.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub vsock_id: Option<String>,
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
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off` (any case).
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub level: Option<String>,
    /// Accepted, not used.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub show_level: Option<bool>,
    /// Accepted, not used.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub show_log_origin: Option<bool>,
    /// Accepted, not used.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
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
    /// Whether the microVM runs: the pre-1.0 field Kata's Firecracker client polls.
    pub started: bool,
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
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub logger: Option<Logger>,
    /// `metrics`.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics: Option<Metrics>,
    /// `drives`, in window order.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// `vsock`.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub vsock: Option<Vsock>,
    /// ringfence's extension: a policy document.
    #[serde(rename = "network-policy", default)]
    pub network_policy: Option<serde_json::Value>,
}
