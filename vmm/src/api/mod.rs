//! `ringfence api`: the subset of Firecracker's REST API that orchestrators (Kata
//! Containers, firecracker-containerd, flintlock) call, on a Unix socket, so ringfence can
//! stand where a `firecracker` binary is expected (issue 20; docs/fleet.md).
//!
//! Firecracker's JSON shapes and status codes: 204 on success, 200 with a body for `GET`, 400
//! with `{"fault_message": ...}` for anything refused. The state machine is [`state`], the
//! HTTP side [`server`]. `--config-file` applies Firecracker's full VM configuration and
//! starts the VM at once; `--no-api` then serves no socket. The process ends with the
//! guest's exit status, as `ringfence run` does.
//! Drives are virtio-blk devices ([`crate::block`]), vsock a virtio-vsock device whose host
//! side is Firecracker's Unix-socket protocol ([`crate::vsock`]).

pub mod model;
pub mod server;
pub mod state;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::config::VmConfig;
use crate::sandbox::SeccompMode;
use model::FullConfig;
use state::ApiState;

/// The version of Firecracker's API description (`firecracker.yaml`, kept in
/// `tests/data/firecracker/`) this server follows: `GET /version` and `firecracker --version`
/// (ringfence installed under that name) report it.
pub const FIRECRACKER_API_VERSION: &str = "1.17.0-dev";

/// How `ringfence api` runs.
#[derive(Clone, Debug, Default)]
pub struct ApiOptions {
    /// The socket to serve (`--api-sock`); `None` with `--no-api`.
    pub socket: Option<PathBuf>,
    /// Firecracker's full configuration (`--config-file`): applied, then the VM starts.
    pub config_file: Option<PathBuf>,
    /// The instance id `GET /` reports.
    pub id: String,
    /// `--seccomp`.
    pub seccomp: SeccompMode,
}

/// Applies a full configuration through the same calls the API takes.
fn apply(state: &mut ApiState, text: &str) -> Result<(), String> {
    let cfg: FullConfig = serde_json::from_str(text).map_err(|e| format!("--config-file: {e}"))?;
    let mut calls: Vec<(&str, String, String)> = Vec::new();
    if let Some(m) = &cfg.machine_config {
        calls.push(("PUT", "/machine-config".into(), json(m)));
    }
    if let Some(b) = &cfg.boot_source {
        calls.push(("PUT", "/boot-source".into(), json(b)));
    }
    for d in &cfg.drives {
        calls.push(("PUT", format!("/drives/{}", d.drive_id), json(d)));
    }
    if let Some(v) = &cfg.vsock {
        calls.push(("PUT", "/vsock".into(), json(v)));
    }
    for n in &cfg.network_interfaces {
        calls.push((
            "PUT",
            format!("/network-interfaces/{}", n.iface_id),
            json(n),
        ));
    }
    if let Some(l) = &cfg.logger {
        calls.push(("PUT", "/logger".into(), json(l)));
    }
    if let Some(m) = &cfg.metrics {
        calls.push(("PUT", "/metrics".into(), json(m)));
    }
    if let Some(p) = &cfg.network_policy {
        calls.push(("PUT", "/network-policy".into(), p.to_string()));
    }
    calls.push((
        "PUT",
        "/actions".into(),
        r#"{"action_type":"InstanceStart"}"#.into(),
    ));
    for (method, path, body) in calls {
        let r = state.handle(method, &path, body.as_bytes());
        if r.status >= 400 {
            return Err(format!(
                "--config-file: {method} {path}: {}",
                r.body.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// A model value as the JSON body `apply` feeds back through `handle`.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Runs the API until the VM it starts has stopped; returns the exit status `ringfence run`
/// would give. Errors are for the process's stderr.
pub fn run(opts: ApiOptions) -> Result<i32, String> {
    let (tx, rx) = mpsc::channel();
    let seccomp = opts.seccomp;
    let tweak: state::ConfigTweak = Box::new(move |c: &mut VmConfig| c.seccomp = seccomp);
    let state = Arc::new(Mutex::new(ApiState::with_notify(
        &opts.id,
        Some(tweak),
        Some(tx),
    )));
    let listener = opts.socket.as_deref().map(server::bind).transpose()?;
    if let Some(path) = &opts.config_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config-file {}: {e}", path.display()))?;
        let mut s = state.lock().map_err(|_| "the API state is poisoned")?;
        apply(&mut s, &text)?;
    }
    if let (Some(listener), Some(path)) = (listener, opts.socket.clone()) {
        let state = state.clone();
        std::thread::Builder::new()
            .name("api-server".into())
            .spawn(move || {
                if let Err(e) = server::serve(listener, path, state) {
                    eprintln!("ringfence: the API server stopped: {e}");
                }
            })
            .map_err(|e| format!("the API server thread: {e}"))?;
    } else if opts.config_file.is_none() {
        return Err("give --api-sock PATH, or --config-file FILE (with --no-api)".into());
    }
    let vm = rx
        .recv()
        .map_err(|_| "the API server stopped before InstanceStart".to_string())?;
    let exit = vm.wait();
    if exit.is_abnormal() {
        eprintln!("ringfence: {exit}");
    }
    if let Some(path) = &opts.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(exit.status())
}
