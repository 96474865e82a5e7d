//! The API's state machine, free of HTTP: a request (method, path, body) in, a status and
//! body out. Before `InstanceStart` the configuration is collected; `InstanceStart` builds a
//! [`VmConfig`] and starts the VM; after it, pre-boot calls are refused as Firecracker
//! refuses them. Every refusal is a 400 with a `fault_message` that says what to fix.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

mod devices;

use super::model::{
    BootSource, Drive, Fault, InstanceActionInfo, InstanceInfo, Logger, MachineConfig, Metrics,
    NetworkInterface, Vsock,
};
use crate::config::{VmConfig, MAX_VCPUS};
use crate::net::NetBackendSpec;
use crate::{Vm, VmHandle};

/// An HTTP answer: status and JSON body (none for 204).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Option<String>,
}

impl Reply {
    fn no_content() -> Self {
        Reply {
            status: 204,
            body: None,
        }
    }

    fn ok(value: &impl serde::Serialize) -> Self {
        Reply {
            status: 200,
            body: serde_json::to_string(value).ok(),
        }
    }

    /// A 400 with `{"fault_message": message}`.
    pub fn fault(message: impl Into<String>) -> Self {
        let fault = Fault {
            fault_message: message.into(),
        };
        Reply {
            status: 400,
            body: serde_json::to_string(&fault).ok(),
        }
    }
}

/// A change made to the built VM configuration before start (`--seccomp`).
pub type ConfigTweak = Box<dyn Fn(&mut VmConfig) + Send>;

/// Everything the API has been told, and the VM once started.
pub struct ApiState {
    id: String,
    machine: MachineConfig,
    boot: Option<BootSource>,
    net: Option<NetworkInterface>,
    drives: Vec<Drive>,
    vsock: Option<Vsock>,
    logger: Option<File>,
    metrics: Option<File>,
    policy: Option<policy::Policy>,
    vm: Option<Arc<VmHandle>>,
    /// Refinements applied to the built configuration before start (`--seccomp`).
    tweak: Option<ConfigTweak>,
    /// Starts the VM for `InstanceStart` (default: [`start_vm`] on this thread's behalf).
    starter: Option<Starter>,
    /// Whether calls touch the host (open files, start the VM); off only for fuzzing.
    effects: bool,
}

/// Firecracker's API allows 1 to 32 vCPUs.
const MAX_API_VCPUS: u32 = 32;
/// The smallest MTU the API takes (IPv4's minimum datagram).
const MIN_MTU: u16 = 68;

const AFTER_START: &str = "the microVM is running: this call is only valid before InstanceStart";

/// Parses a request body: a JSON object of `T`'s shape (serde would also take an array of
/// the fields in order, which the API does not).
fn parse<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, Reply> {
    let bad = |e: String| Reply::fault(format!("bad {what} body: {e}"));
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v @ serde_json::Value::Object(_)) => {
            serde_json::from_value(v).map_err(|e| bad(e.to_string()))
        }
        Ok(other) => Err(bad(format!("expected a JSON object, got {other}"))),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || format!("bad guest_mac {text:?}: expected six hex bytes like 02:00:00:00:00:01");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

fn open_sink(what: &str, path: &str) -> Result<File, Reply> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Reply::fault(format!("cannot open the {what} {path}: {e}")))
}

impl ApiState {
    /// A fresh state for instance `id`; `tweak` runs on the VM configuration before start.
    pub fn new(id: &str, tweak: Option<ConfigTweak>) -> Self {
        Self::with_starter(id, tweak, None)
    }

    /// As [`ApiState::new`], with `starter` starting the VM on `InstanceStart` (`ringfence
    /// api` hands the configuration to its main thread: the server thread is filtered).
    pub fn with_starter(id: &str, tweak: Option<ConfigTweak>, starter: Option<Starter>) -> Self {
        ApiState {
            id: id.to_string(),
            machine: MachineConfig::default(),
            boot: None,
            net: None,
            drives: Vec::new(),
            vsock: None,
            logger: None,
            metrics: None,
            policy: None,
            vm: None,
            tweak,
            starter,
            effects: true,
        }
    }

    /// A state whose calls never touch the host: files named in bodies are not opened and
    /// `InstanceStart` is refused after its checks. For fuzzing the request handling.
    pub fn without_effects(id: &str) -> Self {
        let mut s = Self::new(id, None);
        s.effects = false;
        s
    }

    /// Checks that `path` can be read, unless calls have no effects.
    fn readable(&self, what: &str, path: &str) -> Result<(), Reply> {
        if !self.effects {
            return Ok(());
        }
        File::open(path)
            .map(drop)
            .map_err(|e| Reply::fault(format!("{what} {path}: cannot be read: {e}")))
    }

    /// Opens a log or metrics file for appending, unless calls have no effects.
    fn sink(&self, what: &str, path: &str) -> Result<Option<File>, Reply> {
        if self.effects {
            open_sink(what, path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The started VM, if any.
    pub fn vm(&self) -> Option<&Arc<VmHandle>> {
        self.vm.as_ref()
    }

    fn started(&self) -> bool {
        self.vm.is_some()
    }

    fn log(&mut self, line: &str) {
        if let Some(f) = &mut self.logger {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Serves one request.
    pub fn handle(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        let reply = self.route(method, path, body);
        let line = format!("ringfence api: {method} {path} -> {}", reply.status);
        self.log(&line);
        reply
    }

    fn route(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", [""]) => Reply::ok(&self.info()),
            ("GET", ["version"]) => Reply::ok(&serde_json::json!({
                "firecracker_version": super::FIRECRACKER_API_VERSION
            })),
            ("GET", ["machine-config"]) => Reply::ok(&self.machine),
            ("PUT", ["machine-config"]) => self.put_machine(body),
            ("PATCH", ["machine-config"]) => self.patch_machine(body),
            ("PUT", ["boot-source"]) => self.put_boot(body),
            ("PUT", ["network-interfaces", id]) => self.put_net(id, body),
            ("PATCH", ["network-interfaces", _]) => Reply::fault(
                "PATCH /network-interfaces updates rate limiters, which ringfence does not have",
            ),
            ("PUT", ["drives", id]) => self.put_drive(id, body),
            ("PATCH", ["drives", id]) => self.patch_drive(id, body),
            ("PUT", ["vsock"]) => self.put_vsock(body),
            ("PUT", ["logger"]) => self.put_logger(body),
            ("PUT", ["metrics"]) => self.put_metrics(body),
            ("PUT", ["actions"]) => self.action(body),
            ("PUT" | "PATCH", ["network-policy"]) => self.put_policy(body),
            _ => Reply::fault(format!(
                "invalid request method and/or path: {method} {path} (supported: GET /, GET /version, GET|PUT|PATCH /machine-config, PUT /boot-source, PUT /network-interfaces/ID, PUT|PATCH /drives/ID, PUT /vsock, PUT /logger, PUT /metrics, PUT /actions, PUT|PATCH /network-policy)"
            )),
        }
    }

    fn info(&self) -> InstanceInfo {
        let running = self.vm.as_ref().is_some_and(|v| v.is_running());
        InstanceInfo {
            app_name: "ringfence".into(),
            id: self.id.clone(),
            state: if running { "Running" } else { "Not started" }.into(),
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            started: running,
        }
    }

    fn check_machine(m: &MachineConfig) -> Result<(), Reply> {
        let most = u32::from(MAX_VCPUS).min(MAX_API_VCPUS);
        if m.vcpu_count == 0 || m.vcpu_count > most {
            return Err(Reply::fault(format!(
                "vcpu_count {} is out of range: give 1 to {most}",
                m.vcpu_count
            )));
        }
        if m.mem_size_mib == 0 {
            return Err(Reply::fault("mem_size_mib must be at least 1"));
        }
        if m.smt || m.ht_enabled == Some(true) {
            return Err(Reply::fault(
                "smt (ht_enabled): true is not supported (ringfence guests see one thread per core)",
            ));
        }
        if m.track_dirty_pages {
            return Err(Reply::fault(
                "track_dirty_pages: true is not supported (no snapshots)",
            ));
        }
        for (what, v) in [
            ("cpu_template", &m.cpu_template),
            ("huge_pages", &m.huge_pages),
        ] {
            if v.as_deref().is_some_and(|v| v != "None") {
                return Err(Reply::fault(format!(
                    "{what} {v:?} is not supported; give \"None\" or leave it out"
                )));
            }
        }
        Ok(())
    }

    fn put_machine(&mut self, body: &[u8]) -> Reply {
        if self.started() {
            return Reply::fault(AFTER_START);
        }
        let m: MachineConfig = match parse("machine-config", body) {
            Ok(m) => m,
            Err(r) => return r,
        };
        if let Err(r) = Self::check_machine(&m) {
            return r;
        }
        self.machine = m;
        Reply::no_content()
    }

    fn patch_machine(&mut self, body: &[u8]) -> Reply {
        if self.started() {
            return Reply::fault(AFTER_START);
        }
        let patch: serde_json::Map<String, serde_json::Value> = match parse("machine-config", body)
        {
            Ok(p) => p,
            Err(r) => return r,
        };
        let mut merged = match serde_json::to_value(&self.machine) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Reply::fault("internal: machine-config does not serialise"),
        };
        merged.extend(patch);
        let m: MachineConfig = match serde_json::from_value(serde_json::Value::Object(merged)) {
            Ok(m) => m,
            Err(e) => return Reply::fault(format!("bad machine-config body: {e}")),
        };
        if let Err(r) = Self::check_machine(&m) {
            return r;
        }
        self.machine = m;
        Reply::no_content()
    }

    fn put_boot(&mut self, body: &[u8]) -> Reply {
        if self.started() {
            return Reply::fault(AFTER_START);
        }
        let b: BootSource = match parse("boot-source", body) {
            Ok(b) => b,
            Err(r) => return r,
        };
        for (what, path) in [
            ("kernel_image_path", Some(&b.kernel_image_path)),
            ("initrd_path", b.initrd_path.as_ref()),
        ] {
            if let Some(p) = path {
                if let Err(r) = self.readable(what, p) {
                    return r;
                }
            }
        }
        self.boot = Some(b);
        Reply::no_content()
    }

    fn put_net(&mut self, id: &str, body: &[u8]) -> Reply {
        if self.started() {
            return Reply::fault(AFTER_START);
        }
        let n: NetworkInterface = match parse("network-interfaces", body) {
            Ok(n) => n,
            Err(r) => return r,
        };
        if n.iface_id != id {
            return Reply::fault(format!(
                "iface_id {:?} does not match the path's {id:?}",
                n.iface_id
            ));
        }
        if let Some(other) = self.net.as_ref().filter(|o| o.iface_id != id) {
            return Reply::fault(format!(
                "ringfence has one network interface per VM and {:?} is configured; PUT that id again to change it",
                other.iface_id
            ));
        }
        if !devices::limits_nothing(n.rx_rate_limiter.as_ref())
            || !devices::limits_nothing(n.tx_rate_limiter.as_ref())
        {
            return Reply::fault("rate limiters are not supported");
        }
        if let Some(mtu) = n.mtu.filter(|m| *m < MIN_MTU) {
            return Reply::fault(format!("mtu {mtu} is too small: give {MIN_MTU} to 65535"));
        }
        if n.allow_mmds_requests == Some(true) {
            return Reply::fault("allow_mmds_requests: true is not supported (no MMDS)");
        }
        if let Some(mac) = &n.guest_mac {
            if let Err(e) = parse_mac(mac) {
                return Reply::fault(e);
            }
        }
        self.net = Some(n);
        Reply::no_content()
    }

    fn put_logger(&mut self, body: &[u8]) -> Reply {
        let l: Logger = match parse("logger", body) {
            Ok(l) => l,
            Err(r) => return r,
        };
        if let Some(level) = &l.level {
            let ok = ["error", "warning", "warn", "info", "debug", "trace", "off"];
            if !ok.contains(&level.to_ascii_lowercase().as_str()) {
                return Reply::fault(format!(
                    "bad level {level:?}: expected Error, Warning, Info, Debug, Trace or Off"
                ));
            }
        }
        if let Some(path) = &l.log_path {
            match self.sink("log_path", path) {
                Ok(f) => self.logger = f,
                Err(r) => return r,
            }
        }
        Reply::no_content()
    }

    fn put_metrics(&mut self, body: &[u8]) -> Reply {
        let m: Metrics = match parse("metrics", body) {
            Ok(m) => m,
            Err(r) => return r,
        };
        match self.sink("metrics_path", &m.metrics_path) {
            Ok(f) => {
                self.metrics = f;
                Reply::no_content()
            }
            Err(r) => r,
        }
    }

    fn put_policy(&mut self, body: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(body);
        let p = match policy::Policy::from_json(&text) {
            Ok(p) => p,
            Err(e) => return Reply::fault(format!("bad network-policy body: {e}")),
        };
        match &self.vm {
            None => {
                self.policy = Some(p);
                Reply::no_content()
            }
            Some(vm) => match vm.net_control().set_policy(&p) {
                Ok(()) => Reply::no_content(),
                Err(e) => Reply::fault(format!("the policy could not be applied: {e}")),
            },
        }
    }

    fn action(&mut self, body: &[u8]) -> Reply {
        let a: InstanceActionInfo = match parse("actions", body) {
            Ok(a) => a,
            Err(r) => return r,
        };
        match a.action_type.as_str() {
            "InstanceStart" => self.start(),
            "FlushMetrics" => self.flush_metrics(),
            "SendCtrlAltDel" => Reply::fault(
                "SendCtrlAltDel is not supported: ringfence's i8042 has no keyboard input; stop the guest from inside or end the process",
            ),
            other => Reply::fault(format!(
                "unknown action_type {other:?}: expected InstanceStart, FlushMetrics or SendCtrlAltDel"
            )),
        }
    }

    fn flush_metrics(&mut self) -> Reply {
        let Some(f) = &mut self.metrics else {
            return Reply::fault("FlushMetrics needs PUT /metrics first");
        };
        let line = serde_json::json!({
            "utc_timestamp_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            "api_server": {"instance_running": self.vm.as_ref().is_some_and(|v| v.is_running())},
        });
        match writeln!(f, "{line}") {
            Ok(()) => Reply::no_content(),
            Err(e) => Reply::fault(format!("cannot write the metrics: {e}")),
        }
    }

    /// The VM configuration the collected calls describe.
    pub fn vm_config(&self) -> Result<VmConfig, String> {
        let boot = self
            .boot
            .as_ref()
            .ok_or("InstanceStart needs PUT /boot-source first")?;
        let mut cfg = VmConfig::new(&boot.kernel_image_path);
        cfg.initrd = boot.initrd_path.as_ref().map(Into::into);
        cfg.cmdline = boot.boot_args.clone().unwrap_or_default();
        cfg.mem_mib = self.machine.mem_size_mib;
        cfg.vcpus = u8::try_from(self.machine.vcpu_count).map_err(|_| "vcpu_count too large")?;
        // As `ringfence run` does for the probe guest.
        let probe = cfg.cmdline.contains("probe.");
        cfg.pass_tsc_khz = probe;
        cfg.legacy_pit = !probe;
        if let Some(n) = &self.net {
            cfg.net.backend = match n.host_dev_name.as_str() {
                name if is_tap(name) => NetBackendSpec::Tap(name.to_string()),
                _ => NetBackendSpec::User,
            };
            cfg.net.mac = n.guest_mac.as_deref().map(parse_mac).transpose()?;
            cfg.net.user.mtu = n.mtu;
        }
        cfg.net.user.policy.document = self.policy.clone();
        (cfg.drives, cfg.vsock) = self.device_settings();
        if let Some(tweak) = &self.tweak {
            tweak(&mut cfg);
        }
        Ok(cfg)
    }

    fn start(&mut self) -> Reply {
        if self.started() {
            return Reply::fault("InstanceStart was already done: the microVM is running");
        }
        let cfg = match self.vm_config() {
            Ok(c) => c,
            Err(e) => return Reply::fault(e),
        };
        if !self.effects {
            return Reply::fault("InstanceStart: this API state starts no VM (fuzzing)");
        }
        let started = match &self.starter {
            Some(starter) => starter(cfg),
            None => start_vm(cfg),
        };
        match started {
            Ok(vm) => {
                self.vm = Some(vm);
                Reply::no_content()
            }
            Err(e) => Reply::fault(format!("the microVM did not start: {e}")),
        }
    }
}

/// Starts a VM for `InstanceStart`.
pub type Starter = Box<dyn Fn(VmConfig) -> Result<Arc<VmHandle>, String> + Send>;

/// Starts the VM of `cfg` on a fresh thread (`Vm::start` refuses a thread that ran a VM
/// before, and with seccomp on it filters the thread that calls it for good).
pub fn start_vm(cfg: VmConfig) -> Result<Arc<VmHandle>, String> {
    std::thread::Builder::new()
        .name("api-start".into())
        .spawn(move || Vm::new(cfg).start())
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "the start thread panicked".to_string())?
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Whether `name` is an existing tap (or tun) interface of this host.
fn is_tap(name: &str) -> bool {
    !name.contains('/')
        && Path::new("/sys/class/net")
            .join(name)
            .join("tun_flags")
            .exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Reply) -> String {
        r.body.clone().unwrap_or_default()
    }

    #[test]
    fn configuration_calls_validate_and_refuse_with_a_fault_message() {
        let mut s = ApiState::new("t", None);
        assert_eq!(s.handle("GET", "/", b"").status, 200);
        assert!(body(&s.handle("GET", "/", b"")).contains("Not started"));
        let r = s.handle(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
        );
        assert_eq!(r, Reply::no_content());
        let r = s.handle("PATCH", "/machine-config", br#"{"mem_size_mib": 64}"#);
        assert_eq!(r.status, 204);
        assert!(body(&s.handle("GET", "/machine-config", b"")).contains("\"mem_size_mib\":64"));
        for (method, path, b, says) in [
            (
                "PUT",
                "/machine-config",
                &b"{"[..],
                "bad machine-config body",
            ),
            (
                "PUT",
                "/machine-config",
                br#"{"vcpu_count": 1, "mem_size_mib": 1, "bogus": 1}"#,
                "unknown field",
            ),
            (
                "PUT",
                "/machine-config",
                br#"{"vcpu_count": 0, "mem_size_mib": 1}"#,
                "out of range",
            ),
            (
                "PUT",
                "/machine-config",
                br#"{"vcpu_count": 1, "mem_size_mib": 1, "smt": true}"#,
                "smt",
            ),
            (
                "PUT",
                "/boot-source",
                br#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
                "cannot be read",
            ),
            (
                "PUT",
                "/network-interfaces/eth0",
                br#"{"iface_id": "eth1", "host_dev_name": "t"}"#,
                "does not match",
            ),
            (
                "PUT",
                "/network-interfaces/eth0",
                br#"{"iface_id": "eth0", "host_dev_name": "t", "guest_mac": "zz"}"#,
                "bad guest_mac",
            ),
            ("PUT", "/drives/rootfs", br#"{}"#, "missing field"),
            ("PUT", "/logger", br#"[]"#, "expected a JSON object"),
            (
                "PUT",
                "/drives/rootfs",
                br#"{"drive_id": "rootfs", "is_root_device": true, "path_on_host": "/nonexistent.img"}"#,
                "cannot be read",
            ),
            (
                "PUT",
                "/drives/rootfs",
                br#"{"drive_id": "root", "is_root_device": true}"#,
                "does not match",
            ),
            (
                "PUT",
                "/drives/x",
                br#"{"drive_id": "x", "is_root_device": false, "socket": "/s"}"#,
                "vhost-user-blk",
            ),
            (
                "PUT",
                "/drives/x",
                br#"{"drive_id": "x", "is_root_device": false, "path_on_host": "/dev/null", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
                "rate limiters",
            ),
            (
                "PATCH",
                "/drives/x",
                br#"{"drive_id": "x", "path_on_host": "/dev/null"}"#,
                "only valid after InstanceStart",
            ),
            ("PUT", "/vsock", br#"{}"#, "missing field"),
            (
                "PUT",
                "/vsock",
                br#"{"guest_cid": 2, "uds_path": "/tmp/v.sock"}"#,
                "out of range",
            ),
            (
                "PUT",
                "/actions",
                br#"{"action_type": "Reboot"}"#,
                "unknown action_type",
            ),
            (
                "PUT",
                "/actions",
                br#"{"action_type": "InstanceStart"}"#,
                "boot-source first",
            ),
            (
                "PUT",
                "/actions",
                br#"{"action_type": "FlushMetrics"}"#,
                "PUT /metrics first",
            ),
            (
                "PUT",
                "/network-policy",
                br#"{"rules": 5}"#,
                "bad network-policy body",
            ),
            ("DELETE", "/", b"", "invalid request method"),
        ] {
            let r = s.handle(method, path, b);
            assert_eq!(r.status, 400, "{method} {path}");
            assert!(
                body(&r).contains("fault_message") && body(&r).contains(says),
                "{method} {path}: {}",
                body(&r)
            );
        }
        let r = s.handle("PUT", "/network-interfaces/eth0", br#"{"iface_id": "eth0", "host_dev_name": "no-such-tap", "guest_mac": "02:00:00:00:00:07"}"#);
        assert_eq!(r.status, 204);
        let r = s.handle(
            "PUT",
            "/network-interfaces/eth1",
            br#"{"iface_id": "eth1", "host_dev_name": "t"}"#,
        );
        assert!(body(&r).contains("one network interface"));
        let r = s.handle("PUT", "/network-policy", br#"{"preset": "none"}"#);
        assert_eq!(r.status, 204);
    }
}
