//! Direct mode: the same scenarios on a host whose own KVM runs guest kernels at full speed,
//! with no outer VM.
//!
//! The runner (`rf-nested run --direct`) starts under `unshare --net --mount`: a network
//! namespace of its own holds the dummy interface with the TEST-NET, private and metadata
//! addresses and the servers' ports, and a mount namespace of its own gives it a private
//! `/etc/resolv.conf`; the runner refuses to start in the host's namespaces. So a
//! direct run, like an outer VM, reaches nothing outside itself. ringfence and `rf-nested`
//! come from the build's binary directory, the Linux image from the host's image cache.
//!
//! Whether a host qualifies is `ringfence doctor`'s verdict ([`host_runs_guest_kernels`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::outer::{progress, read_results, record, SuiteRun};
use super::scenario::Scenario;

/// Selects how the suite runs: `direct`, `outer`, or unset (direct where `ringfence doctor`
/// says guest kernels run at full speed, else the outer VM).
pub const MODE_ENV: &str = "RINGFENCE_NESTED_MODE";

/// Time a direct run may take beyond its scenarios' own limits (start-up, servers).
const SLACK: Duration = Duration::from_secs(60);

/// `ringfence doctor`'s verdict on this host: `Ok(true)` where guest kernel mode runs at full
/// speed (Linux guests run directly), `Ok(false)` where it is emulated; `Err` when doctor
/// cannot be run or read.
pub fn host_runs_guest_kernels(ringfence: &Path) -> Result<bool, String> {
    let out = Command::new(ringfence)
        .args(["doctor", "--json"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} doctor: {e}", ringfence.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ringfence doctor --json printed no JSON: {e}"))?;
    Ok(report["guest_kernel_mode"] == "native")
}

/// Runs `scenarios` directly on this host: `bin_dir` holds `ringfence` and `rf-nested`;
/// logs and the result file go to `logs`. Prints a progress line per scenario.
pub fn run_suite(bin_dir: &Path, scenarios: &[Scenario], logs: &Path) -> Result<SuiteRun, String> {
    std::fs::create_dir_all(logs)
        .map_err(|e| format!("cannot create the log directory {}: {e}", logs.display()))?;
    let list = logs.join("direct-scenarios.json");
    let json: Vec<_> = scenarios.iter().map(Scenario::to_json).collect();
    std::fs::write(&list, serde_json::Value::Array(json).to_string())
        .map_err(|e| format!("cannot write {}: {e}", list.display()))?;
    let results = logs.join("direct-results.jsonl");
    std::fs::write(&results, "").map_err(|e| format!("cannot write {}: {e}", results.display()))?;
    let console = logs.join("direct-console.log");
    let console_file = |what| {
        std::fs::File::create(&console)
            .map_err(|e| format!("cannot create {} ({what}): {e}", console.display()))
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs).map_err(|e| format!("PATH: {e}"))?;
    progress(&format!(
        "nested: running {} scenarios directly on this host (namespaces of their own); logs in {}",
        scenarios.len(),
        logs.display()
    ));
    let mut child = Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(bin_dir.join("rf-nested"))
        .args(["run", "--direct"])
        .arg(&list)
        .arg(&results)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(console_file("stdout")?)
        .stderr(console_file("stderr")?)
        .spawn()
        .map_err(|e| format!("cannot start unshare (util-linux): {e}"))?;
    let limit = scenarios
        .iter()
        .map(|s| Duration::from_secs(s.timeout_secs))
        .sum::<Duration>()
        + SLACK;
    let started = Instant::now();
    let mut outcomes = BTreeMap::new();
    let mut seen = 0;
    let early_end = loop {
        let exited = child
            .try_wait()
            .map_err(|e| format!("waiting for the runner: {e}"))?;
        for o in read_results(&results).into_iter().skip(seen) {
            seen += 1;
            record(logs, started, &mut outcomes, o);
        }
        match exited {
            Some(status) if status.success() => break None,
            Some(status) => {
                break Some(format!(
                    "the runner ended with {status} (see {})",
                    console.display()
                ))
            }
            None if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break Some(format!(
                    "the runner was still going after {} s and was killed",
                    limit.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    progress(&format!(
        "nested: done after {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(SuiteRun {
        outcomes,
        logs: PathBuf::from(logs),
        early_end,
        interrupted: Vec::new(),
    })
}
