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
use crate::VmHandle;
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

/// What the API's server thread asks of the main thread.
enum ToMain {
    /// `InstanceStart`: start this VM and answer.
    Start(Box<VmConfig>, mpsc::Sender<Result<Arc<VmHandle>, String>>),
    /// `--config-file` could not be applied, or the thread could not be filtered.
    Failed(String),
}

/// Runs the API until the VM it starts has stopped; returns the exit status `ringfence run`
/// would give. Errors are for the process's stderr.
///
/// Threads: the server thread (`api-server`) applies `--config-file` and serves the socket
/// under the API seccomp filter (docs/security.md); it cannot start a VM, so `InstanceStart`
/// hands the configuration to this (the main) thread, which starts the VM from a fresh,
/// unfiltered thread, answers, and waits for the VM's end.
pub fn run(opts: ApiOptions) -> Result<i32, String> {
    let (tx, rx) = mpsc::channel();
    let seccomp = opts.seccomp;
    let tweak: state::ConfigTweak = Box::new(move |c: &mut VmConfig| c.seccomp = seccomp);
    let start_tx = Mutex::new(tx.clone());
    let starter: state::Starter = Box::new(move |cfg| {
        let (reply_tx, reply_rx) = mpsc::channel();
        start_tx
            .lock()
            .map_err(|_| "the API's start channel is poisoned".to_string())?
            .send(ToMain::Start(Box::new(cfg), reply_tx))
            .map_err(|_| "the main thread is gone".to_string())?;
        reply_rx
            .recv()
            .map_err(|_| "the main thread did not answer".to_string())?
    });
    let state = ApiState::with_starter(&opts.id, Some(tweak), Some(starter));
    // Bound and read here, before the server thread is filtered.
    let listener = opts.socket.as_deref().map(server::bind).transpose()?;
    let config = match &opts.config_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--config-file {}: {e}", path.display()))?,
        ),
        None if listener.is_none() => {
            return Err("give --api-sock PATH, or --config-file FILE (with --no-api)".into())
        }
        None => None,
    };
    let socket = opts.socket.clone();
    std::thread::Builder::new()
        .name("api-server".into())
        .spawn(move || {
            if let Err(e) = crate::sandbox::filter_api_thread(seccomp) {
                let _ = tx.send(ToMain::Failed(e.to_string()));
                return;
            }
            let state = Arc::new(Mutex::new(state));
            if let Some(text) = config {
                let applied = match state.lock() {
                    Ok(mut s) => apply(&mut s, &text),
                    Err(_) => Err("the API state is poisoned".into()),
                };
                if let Err(e) = applied {
                    let _ = tx.send(ToMain::Failed(e));
                    return;
                }
            }
            drop(tx);
            if let (Some(listener), Some(path)) = (listener, socket) {
                if let Err(e) = server::serve(listener, path, state) {
                    eprintln!("ringfence: the API server stopped: {e}");
                }
            }
        })
        .map_err(|e| format!("the API server thread: {e}"))?;
    let vm = loop {
        match rx.recv() {
            Ok(ToMain::Start(cfg, reply)) => match state::start_vm(*cfg) {
                Ok(vm) => {
                    let _ = reply.send(Ok(vm.clone()));
                    break vm;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Ok(ToMain::Failed(e)) => return Err(e),
            Err(_) => return Err("the API server stopped before InstanceStart".into()),
        }
    };
    let exit = vm.wait();
    if exit.is_abnormal() {
        eprintln!("ringfence: {exit}");
    }
    if let Some(path) = &opts.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(exit.status())
}
