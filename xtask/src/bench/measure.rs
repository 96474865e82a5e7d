//! Runs one VMM process and measures it: wall time to the guest's ready line and to exit, CPU
//! time and peak RSS from `wait4`'s rusage.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunSample {
    /// Process start to the first line containing the ready marker.
    pub ready: Option<Duration>,
    /// Process start to exit.
    pub exit: Duration,
    /// User + system CPU time of the process (and children it waited for).
    pub cpu: Duration,
    /// Peak resident set size in KiB.
    pub max_rss_kib: u64,
    /// Raw wait status.
    pub status: i32,
    /// Every line the process printed on stdout.
    pub stdout: Vec<String>,
    /// What it printed on stderr (errors, warnings).
    pub stderr: String,
    /// CPU times of the process (and of `also_sample`) when the result line appeared.
    pub cpu_at_result: Option<(super::procstat::CpuTimes, Option<super::procstat::CpuTimes>)>,
}

impl RunSample {
    /// The exit code, if it exited normally.
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }
}

/// Spawns `cmd`, watches stdout for `ready_marker`, and reaps it with rusage.
pub fn run_measured(cmd: &mut Command, ready_marker: &str, limit: Duration) -> Result<RunSample> {
    run_measured_with(cmd, ready_marker, limit, None)
}

/// Like [`run_measured`], and when the probe's JSON result line appears, samples the CPU
/// times of the process and of `also_sample` (a helper such as passt).
pub fn run_measured_with(
    cmd: &mut Command,
    ready_marker: &str,
    limit: Duration,
    also_sample: Option<u32>,
) -> Result<RunSample> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr_pipe = child.stderr.take().context("no stderr pipe")?;
    // Drained on its own thread so a chatty child never blocks on a full pipe.
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut text);
        text
    });
    let marker = ready_marker.to_string();
    let (tx, rx) = mpsc::channel();
    let child_pid = child.id();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut ready = None;
        let mut cpu = None;
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if ready.is_none() && line.contains(&marker) {
                ready = Some(start.elapsed());
            }
            if cpu.is_none() && line.starts_with("{\"scenario\":") {
                cpu = super::procstat::read(child_pid)
                    .map(|c| (c, also_sample.and_then(super::procstat::read)));
            }
            lines.push(line);
        }
        let _ = tx.send((ready, lines, cpu));
    });
    let pid = child.id() as libc::pid_t;
    let watchdog_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wd = {
        let done = watchdog_done.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if t.elapsed() > limit {
                    // SAFETY: `pid` is our child, not yet reaped (we reap it below only after
                    // this thread is told to stop), so the pid cannot have been reused.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child; `status` and `usage` are valid out-parameters.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    watchdog_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = wd.join();
    if rc != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let _ = reader.join();
    let stderr = stderr_reader.join().unwrap_or_default();
    let (ready, stdout, cpu_at_result) = rx.recv().unwrap_or((None, Vec::new(), None));
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    // std's Child would try to reap again on wait(); we never call it, and dropping it is fine.
    drop(child);
    Ok(RunSample {
        ready,
        exit,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
        status,
        stdout,
        stderr,
        cpu_at_result,
    })
}
