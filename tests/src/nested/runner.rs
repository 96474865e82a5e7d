//! `rf-nested run LIST RESULTS`: the outer VM's scenario runner.
//!
//! It starts the [`services`](super::services), then runs each scenario of LIST (a JSON array
//! of [`Scenario`]s) as `sh -c SCRIPT` in a process group of its own, kills the group at the
//! scenario's deadline (so a hung guest cannot hang the suite), and writes one
//! [`RESULT_PREFIX`] line per scenario to RESULTS (the outer VM's second serial port). The
//! host reads those lines as they come; the console (first serial port) keeps the kernel's and
//! the runner's progress messages.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::scenario::{Outcome, Scenario, RESULT_PREFIX};

/// The Linux image's initramfs: in `$RINGFENCE_LINUX_IMAGE`, else in
/// `$HOME/.cache/ringfence/linux` (where the kit puts it inside the outer VM, and where
/// `cargo xtask image` caches it on a host).
fn image_initramfs() -> PathBuf {
    let dir = std::env::var_os("RINGFENCE_LINUX_IMAGE").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/ringfence/linux")
        },
        PathBuf::from,
    );
    dir.join("initramfs.cpio.gz")
}
/// Name of the pseudo-scenario that reports the runner's own set-up.
pub const SETUP_NAME: &str = "_setup";
/// Most bytes of a stream kept in a result (the tail is kept: that is where failures show).
const MAX_CAPTURE: usize = 512 * 1024;

/// Runs every scenario in `list`, writing result lines to `results`. `direct`: the runner
/// is on a real host, in network and mount namespaces of its own (see
/// [`super::direct`]), rather than in the outer VM.
pub fn run(list: &Path, results: Box<dyn Write + Send>, direct: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(list)
        .map_err(|e| format!("cannot read the scenario list {}: {e}", list.display()))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the scenario list {} is not JSON: {e}", list.display()))?;
    let scenarios = value
        .as_array()
        .ok_or("the scenario list is not a JSON array")?
        .iter()
        .map(Scenario::from_json)
        .collect::<Result<Vec<_>, _>>()?;

    if direct {
        super::services::isolate_direct_run(list.parent().unwrap_or(Path::new(".")))?;
    }
    let results = std::sync::Arc::new(std::sync::Mutex::new(results));
    spawn_heartbeat(results.clone());
    let mut failures = super::services::setup_outer_network();
    failures.extend(super::services::start_all());
    let setup = Outcome {
        name: SETUP_NAME.into(),
        status: Some(i32::from(!failures.is_empty())),
        stderr: failures.join("\n"),
        ..Default::default()
    };
    report(&results, &setup)?;
    for s in &scenarios {
        println!("rf-nested: {} ...", s.name);
        let outcome = run_one(s);
        println!(
            "rf-nested: {} -> status {:?}{} in {:.1} s",
            s.name,
            outcome.status,
            if outcome.timed_out {
                " (timed out)"
            } else {
                ""
            },
            outcome.secs
        );
        report(&results, &outcome)?;
    }
    Ok(())
}

/// The result port, shared by the scenario loop and the heartbeat (whole lines only).
type ResultPort = std::sync::Arc<std::sync::Mutex<Box<dyn Write + Send>>>;

/// Interval of the `ALIVE n` lines on the result port: the host takes their absence as a
/// frozen outer VM, whatever the running scenario's own deadline.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

fn write_line(port: &ResultPort, line: &str) -> Result<(), String> {
    let mut out = port
        .lock()
        .map_err(|_| "the result port lock is poisoned")?;
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to the result port: {e}"))
}

fn report(port: &ResultPort, o: &Outcome) -> Result<(), String> {
    write_line(port, &format!("{RESULT_PREFIX}{}\n", o.to_json()))
}

fn spawn_heartbeat(port: ResultPort) {
    std::thread::spawn(move || {
        for n in 0u64.. {
            if write_line(&port, &format!("ALIVE {n}\n")).is_err() {
                return;
            }
            std::thread::sleep(HEARTBEAT);
        }
    });
}

fn failed(name: &str, why: String) -> Outcome {
    Outcome {
        name: name.into(),
        stderr: format!("rf-nested: {why}"),
        ..Default::default()
    }
}

/// Runs one scenario to its end or its deadline.
fn run_one(s: &Scenario) -> Outcome {
    let dir = PathBuf::from("/tmp/rf").join(&s.name);
    let initrd = match prepare_initrd(s, &dir) {
        Ok(p) => p,
        Err(e) => return failed(&s.name, e),
    };
    let started = Instant::now();
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(&s.script)
        .env("RF_INITRD", &initrd)
        .env("RF_DIR", &dir)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(&s.name, format!("cannot start sh: {e}")),
    };
    let out = child.stdout.take().map(capture);
    let err = child.stderr.take().map(capture);
    let deadline = started + Duration::from_secs(s.timeout_secs);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                kill_group(child.id());
                break child.wait().ok().and_then(|st| st.code());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    // Background processes the script left behind (servers, a stuck ringfence) go too, which
    // also closes the pipes the capture threads read.
    kill_group(child.id());
    let join = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Outcome {
        name: s.name.clone(),
        status,
        timed_out,
        secs: started.elapsed().as_secs_f64(),
        stdout: join(out),
        stderr: join(err),
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals the process group the runner created for
        // this scenario (process_group(0) made the child its leader); no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Reads a stream to its end on a thread, keeping the last [`MAX_CAPTURE`] bytes.
fn capture(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * MAX_CAPTURE {
                kept.drain(..kept.len() - MAX_CAPTURE);
            }
        }
        if kept.len() > MAX_CAPTURE {
            kept.drain(..kept.len() - MAX_CAPTURE);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// Makes the scenario's directory and, when it has guest files, an initramfs that is the
/// image's with a cpio archive of those files appended (Linux unpacks concatenated archives;
/// each must start 4-byte aligned). Returns the initramfs to boot.
fn prepare_initrd(s: &Scenario, dir: &Path) -> Result<PathBuf, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::create_dir_all(dir).map_err(|e| io("scenario directory", e))?;
    if s.guest_files.is_empty() {
        return Ok(image_initramfs());
    }
    let root = dir.join("guest");
    for (path, contents) in &s.guest_files {
        let file = root.join(path.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("guest file directory", e))?;
        }
        std::fs::write(&file, contents).map_err(|e| io("guest file", e))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("guest file mode", e))?;
    }
    let archive = Command::new("sh")
        .arg("-c")
        .arg("find . -mindepth 1 | cpio -o -H newc")
        .current_dir(&root)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| io("busybox cpio", e))?;
    if !archive.status.success() || archive.stdout.is_empty() {
        return Err(format!("busybox cpio failed ({})", archive.status));
    }
    let image = image_initramfs();
    let mut initrd = std::fs::read(&image).map_err(|e| io(&image.display().to_string(), e))?;
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend_from_slice(&archive.stdout);
    let out = dir.join("initrd");
    std::fs::write(&out, initrd).map_err(|e| io("combined initrd", e))?;
    Ok(out)
}

/// Describes the runner's environment for the console (kernel, KVM module state).
pub fn environment() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    json!({
        "kernel": read("/proc/version").trim(),
        "kvm": Path::new("/dev/kvm").exists(),
        "nested": read("/sys/module/kvm_amd/parameters/nested").trim(),
        "npt": read("/sys/module/kvm_amd/parameters/npt").trim(),
    })
}
