//! The host side of the nested harness: boots the outer VM under QEMU TCG with the kit that
//! `cargo xtask nested` (or `cargo xtask test`) assembled, hands it the scenario list through
//! fw_cfg, follows its result port, and returns every scenario's [`Outcome`].
//!
//! The kit (`$RINGFENCE_NESTED_KIT`) holds `vmlinuz` (Debian's cloud kernel) and `outer.cpio`
//! (busybox, the kvm modules, ringfence, the runner, tcpdump, the Linux guest image). Logs of
//! both consoles, the scenario list and every scenario's output stay in the log directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::scenario::{Outcome, Scenario, RESULT_PREFIX};

/// Environment variable naming the kit directory.
pub const KIT_ENV: &str = "RINGFENCE_NESTED_KIT";
/// The outer VM's CPU model (`$RINGFENCE_NESTED_CPU` overrides it): QEMU's software CPU
/// with AMD SVM and nested paging.
pub const DEFAULT_CPU: &str = "qemu64,+svm,+npt";
/// fw_cfg name under which the outer VM finds the scenario list.
pub const FW_CFG_NAME: &str = "opt/ringfence/scenarios.json";
/// Time the outer VM gets for booting and loading its modules.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(180);

/// The outer VM's kernel and initramfs.
#[derive(Clone, Debug)]
pub struct Kit {
    /// Debian's cloud kernel.
    pub kernel: PathBuf,
    /// The outer initramfs (uncompressed cpio).
    pub initrd: PathBuf,
}

impl Kit {
    /// The kit named by `$RINGFENCE_NESTED_KIT`, or why there is none.
    pub fn from_env() -> Result<Kit, String> {
        let dir = std::env::var_os(KIT_ENV).map(PathBuf::from).ok_or(format!(
            "no nested-harness kit (${KIT_ENV} is not set; `cargo xtask test` and `cargo xtask nested` build it)"
        ))?;
        let kit = Kit {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("outer.cpio"),
        };
        if !kit.kernel.is_file() || !kit.initrd.is_file() {
            return Err(format!(
                "the nested-harness kit in {} is incomplete (needs vmlinuz and outer.cpio); rebuild it with `cargo xtask nested --build-only`",
                dir.display()
            ));
        }
        Ok(kit)
    }
}

/// What a whole suite run produced.
#[derive(Debug)]
pub struct SuiteRun {
    /// Outcomes by scenario name (the runner's `_setup` included).
    pub outcomes: BTreeMap<String, Outcome>,
    /// Where the logs are.
    pub logs: PathBuf,
    /// Why an outer VM ended early, the last time one did (freeze, crash).
    pub early_end: Option<String>,
    /// Scenarios during which an outer VM froze or crashed and that ran again in a new one.
    pub interrupted: Vec<String>,
}

impl SuiteRun {
    /// The outcome of scenario `name`, or an explanation pointing at the logs.
    pub fn outcome(&self, name: &str) -> Result<&Outcome, String> {
        if let Some(o) = self.outcomes.get(name) {
            return Ok(o);
        }
        Err(format!(
            "scenario {name} reported no result ({}); the outer consoles are in {}",
            self.early_end
                .as_deref()
                .unwrap_or("the outer VM ended before it ran"),
            self.logs.display()
        ))
    }
}

/// Boots the outer VM with `scenarios` and collects their outcomes, printing progress on
/// stderr. When the outer VM freezes (no heartbeat for [`STALL_GRACE`]) or ends early, the
/// scenario it was on runs again with the rest in a fresh outer VM, up to
/// [`MAX_INTERRUPTIONS`] times; one more interruption of the same scenario records it as
/// failed. At most [`MAX_BOOTS`] outer VMs. Fails only when
/// the outer VM cannot be started at all.
pub fn run_suite(kit: &Kit, scenarios: &[Scenario], logs: &Path) -> Result<SuiteRun, String> {
    std::fs::create_dir_all(logs)
        .map_err(|e| format!("cannot create the log directory {}: {e}", logs.display()))?;
    let started = Instant::now();
    let mut outcomes = BTreeMap::new();
    let mut early_end = None;
    let mut remaining: Vec<Scenario> = scenarios.to_vec();
    let mut interrupted: Vec<String> = Vec::new();
    for boot in 1..=MAX_BOOTS {
        let end = boot_once(kit, &remaining, logs, boot, started, &mut outcomes)?;
        remaining.retain(|s| !outcomes.contains_key(&s.name));
        match (end, remaining.first().cloned()) {
            (_, None) => break,
            (BootEnd::Finished, Some(s)) => {
                early_end = Some(format!(
                    "the outer VM powered off before scenario {} (did the runner fail? see {})",
                    s.name,
                    console_log(logs, boot).display()
                ));
                break;
            }
            (BootEnd::Stalled(why) | BootEnd::Exited(why), Some(stuck)) => {
                let where_ = format!("{why} during {}", stuck.name);
                early_end = Some(where_.clone());
                let times = interrupted.iter().filter(|n| **n == stuck.name).count();
                if times < MAX_INTERRUPTIONS {
                    // Once is the emulator's (QEMU TCG's nested SVM can freeze the outer VM):
                    // the scenario runs again, first, in a fresh outer VM.
                    progress(&format!(
                        "nested: {where_}; re-running it and the rest in a new outer VM"
                    ));
                    interrupted.push(stuck.name.clone());
                    continue;
                }
                progress(&format!(
                    "nested: {where_} again ({MAX_INTERRUPTIONS} times already); the rest go to a new outer VM"
                ));
                let failed = Outcome {
                    name: stuck.name.clone(),
                    timed_out: true,
                    stderr: format!(
                        "rf-nested: {why} during this scenario, {} times (outer console: {})",
                        MAX_INTERRUPTIONS + 1,
                        console_log(logs, boot).display()
                    ),
                    ..Default::default()
                };
                record(logs, started, &mut outcomes, failed);
                remaining.remove(0);
            }
        }
        if remaining.is_empty() {
            break;
        }
    }
    progress(&format!(
        "nested: done after {:.0} s{}",
        started.elapsed().as_secs_f64(),
        early_end
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    ));
    Ok(SuiteRun {
        outcomes,
        logs: logs.to_path_buf(),
        early_end,
        interrupted,
    })
}

/// Outer VMs one suite may boot (the first, and one after each stall).
pub const MAX_BOOTS: usize = 5;
/// How often one scenario may be interrupted by a frozen or crashed outer VM and still run
/// again (QEMU 7.2's TCG freezes about once in 20 inner boots; a CI run once saw it twice in
/// a row on the same scenario).
pub const MAX_INTERRUPTIONS: usize = 2;
/// Silence on the result port (the runner's heartbeat comes every 5 s) after which the outer
/// VM counts as frozen.
pub const STALL_GRACE: Duration = Duration::from_secs(45);

/// How one outer VM ended.
enum BootEnd {
    /// It ran every scenario it was given (or powered off on its own).
    Finished,
    /// It stopped reporting: the reason.
    Stalled(String),
    /// QEMU exited before the last scenario: the reason.
    Exited(String),
}

fn console_log(logs: &Path, boot: usize) -> PathBuf {
    match boot {
        1 => logs.join("outer-console.log"),
        n => logs.join(format!("outer-console-{n}.log")),
    }
}

/// Prints a progress line for `o`, keeps its log and records it.
pub(super) fn record(
    logs: &Path,
    started: Instant,
    outcomes: &mut BTreeMap<String, Outcome>,
    o: Outcome,
) {
    progress(&format!(
        "nested: [{:>4.0} s] {:<28} status {:?}{} ({:.1} s)",
        started.elapsed().as_secs_f64(),
        o.name,
        o.status,
        if o.timed_out { ", TIMED OUT" } else { "" },
        o.secs
    ));
    let _ = std::fs::write(logs.join(format!("{}.log", o.name)), o.describe());
    // The first outer VM's set-up stands unless a later one failed its own.
    if o.name != super::runner::SETUP_NAME || o.status != Some(0) || !outcomes.contains_key(&o.name)
    {
        outcomes.insert(o.name.clone(), o);
    }
}

/// Boots one outer VM for `scenarios` and follows it until it ends or stalls.
fn boot_once(
    kit: &Kit,
    scenarios: &[Scenario],
    logs: &Path,
    boot: usize,
    started: Instant,
    outcomes: &mut BTreeMap<String, Outcome>,
) -> Result<BootEnd, String> {
    let list = logs.join(format!("scenarios-{boot}.json"));
    let json: Vec<_> = scenarios.iter().map(Scenario::to_json).collect();
    std::fs::write(&list, serde_json::Value::Array(json).to_string())
        .map_err(|e| format!("cannot write {}: {e}", list.display()))?;
    let results = logs.join(format!("results-{boot}.jsonl"));
    let _ = std::fs::remove_file(&results);
    progress(&format!(
        "nested: booting outer VM #{boot} (QEMU TCG, AMD SVM) for {} scenarios; logs in {}",
        scenarios.len(),
        logs.display()
    ));
    let mut qemu = start_qemu(kit, &list, &console_log(logs, boot), &results)?;
    let mut seen = 0usize;
    let mut last_progress = Instant::now();
    let mut last_len = 0;
    loop {
        let exited = qemu
            .try_wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?;
        // The runner's heartbeat makes the result port grow every few seconds while the
        // outer VM is alive.
        let len = std::fs::metadata(&results).map_or(0, |m| m.len());
        if len != last_len {
            last_len = len;
            last_progress = Instant::now();
        }
        for o in read_results(&results).into_iter().skip(seen) {
            seen += 1;
            record(logs, started, outcomes, o);
        }
        // Results so far: the runner's set-up line, then one per scenario in order.
        let next = seen.checked_sub(1).and_then(|i| scenarios.get(i));
        if let Some(status) = exited {
            return Ok(match next {
                Some(_) => BootEnd::Exited(format!("QEMU exited ({status})")),
                None => BootEnd::Finished,
            });
        }
        let allowance = if seen == 0 {
            BOOT_ALLOWANCE
        } else {
            STALL_GRACE
        };
        if last_progress.elapsed() > allowance {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return Ok(match next {
                Some(_) => BootEnd::Stalled(format!(
                    "the outer VM froze (no heartbeat for {} s)",
                    allowance.as_secs()
                )),
                None if seen == 0 => {
                    return Err(format!(
                        "the outer VM did not come up within {} s; see {}",
                        allowance.as_secs(),
                        console_log(logs, boot).display()
                    ))
                }
                None => BootEnd::Finished,
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn start_qemu(kit: &Kit, list: &Path, console: &Path, results: &Path) -> Result<Child, String> {
    let mut cmd = Command::new("qemu-system-x86_64");
    let cpu = std::env::var("RINGFENCE_NESTED_CPU").unwrap_or_else(|_| DEFAULT_CPU.into());
    cmd.args(["-accel", "tcg", "-cpu", &cpu, "-m", "2048"])
        .args([
            "-smp",
            "1",
            "-no-reboot",
            "-nic",
            "none",
            "-display",
            "none",
        ])
        .args(["-monitor", "none", "-kernel"])
        .arg(&kit.kernel)
        .arg("-initrd")
        .arg(&kit.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-fw_cfg")
        .arg(format!("name={FW_CFG_NAME},file={}", list.display()))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start qemu-system-x86_64: {e} (install it: apt-get install qemu-system-x86)"
        )
    })?;
    // A QEMU that lacks SVM, or a bad kit, fails at once with a message on stderr.
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(status)) = child.try_wait() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(format!(
            "QEMU refused to start the outer VM ({status}): {}",
            err.trim()
        ));
    }
    Ok(child)
}

/// Every complete result line written so far.
pub(super) fn read_results(path: &Path) -> Vec<Outcome> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(RESULT_PREFIX))
        .filter_map(|(_, json)| serde_json::from_str(json).ok())
        .filter_map(|v| Outcome::from_json(&v).ok())
        .collect()
}

/// One progress line on the real stderr (not captured by the test harness).
pub(super) fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
