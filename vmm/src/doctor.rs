//! `ringfence doctor`: what this host can do, checked rather than assumed.
//!
//! Checks KVM (device, permission, API version, capabilities), io_uring, `/dev/net/tun`,
//! network namespaces and ICMP ping sockets, then measures guest CPL0 against CPL3 loop speed
//! in a throwaway VM to say whether guest kernels run at full speed or are emulated.

use std::fmt;

use crate::kvm::speed::{self, LoopSpeed, Ring};
use crate::kvm::{KvmHost, REQUIRED_CAPS};

/// Iterations of the user-mode loop (tens of milliseconds at native speed).
const USER_ITERATIONS: u64 = 100_000_000;
/// Iterations of the kernel-mode loop (sub-millisecond native; ~0.2 s where emulated).
const KERNEL_ITERATIONS: u64 = 100_000;
/// Kernel-mode loops this many times slower than user-mode ones mean emulation. Measured:
/// 2270–3950x on hosts whose KVM emulates guest kernel mode; about 1x with hardware
/// virtualization; 1–60x inside the nested harness's outer VM (QEMU TCG with SVM), where the
/// kernel loop's 100 000 iterations are short enough for VM entry costs and host load to show.
const EMULATION_RATIO: f64 = 200.0;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Ok,
    /// Works with a limitation.
    Warn,
    /// Missing: ringfence (or that feature) cannot work.
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found, and what to do about it.
    pub detail: String,
}

/// How guest kernel mode runs on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestKernelSpeed {
    /// Hardware virtualization: guest kernels run at full speed.
    Native,
    /// Guest kernel mode is emulated: Linux guests cannot run usefully here.
    Emulated,
    /// Not measured (KVM unusable).
    Unknown,
}

/// Everything `doctor` found.
#[derive(Clone, Debug)]
pub struct Report {
    /// Individual checks, in order.
    pub checks: Vec<Check>,
    /// The guest speed verdict.
    pub kernel_speed: GuestKernelSpeed,
    /// The two loop measurements, when KVM worked.
    pub speeds: Option<(LoopSpeed, LoopSpeed)>,
}

impl Report {
    /// One sentence on whether Linux guests can run here (used by `--linux` refusals and
    /// test skips).
    pub fn linux_verdict(&self) -> String {
        match (self.kernel_speed, self.speeds) {
            (GuestKernelSpeed::Native, _) => {
                "guest kernel mode runs at full speed: Linux guests are supported".into()
            }
            (GuestKernelSpeed::Emulated, Some((k, u))) => format!(
                "guest kernel mode is emulated on this host ({:.0} ns per kernel-mode loop iteration vs {:.2} ns in user mode, {:.0}x slower); Linux guests need a host with hardware virtualization",
                k.ns_per_iteration(),
                u.ns_per_iteration(),
                k.ns_per_iteration() / u.ns_per_iteration().max(1e-3)
            ),
            _ => "KVM is not usable on this host".into(),
        }
    }

    /// Whether any check failed.
    pub fn has_failures(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The report as one JSON object (for scripts).
    pub fn to_json(&self) -> String {
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "status": format!("{:?}", c.status).to_lowercase(),
                    "detail": c.detail,
                })
            })
            .collect();
        let speeds = self.speeds.map(|(k, u)| {
            serde_json::json!({
                "cpl0_ns_per_iter": k.ns_per_iteration(),
                "cpl3_ns_per_iter": u.ns_per_iteration(),
            })
        });
        serde_json::json!({
            "checks": checks,
            "guest_kernel_mode": format!("{:?}", self.kernel_speed).to_lowercase(),
            "speeds": speeds,
            "linux_verdict": self.linux_verdict(),
        })
        .to_string()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            writeln!(f, "[{tag}] {:<22} {}", c.name, c.detail)?;
        }
        writeln!(f)?;
        write!(f, "verdict: {}", self.linux_verdict())?;
        if self.kernel_speed == GuestKernelSpeed::Emulated {
            write!(
                f,
                ".\n         The probe guest (which leaves kernel mode at once) runs at full speed here."
            )?;
        }
        Ok(())
    }
}

/// Runs every check. `measure` = false skips the speed measurement.
pub fn run(measure: bool) -> Report {
    let mut checks = Vec::new();
    let mut kernel_speed = GuestKernelSpeed::Unknown;
    let mut speeds = None;
    match KvmHost::open() {
        Err(e) => checks.push(Check {
            name: "/dev/kvm",
            status: Status::Fail,
            detail: e.to_string(),
        }),
        Ok(host) => {
            checks.push(Check {
                name: "/dev/kvm",
                status: Status::Ok,
                detail: format!("opened, API version {}", host.api_version()),
            });
            let missing: Vec<String> = REQUIRED_CAPS
                .iter()
                .filter(|(cap, _)| !host.has_cap(*cap))
                .map(|(cap, why)| format!("{cap:?} ({why})"))
                .collect();
            checks.push(Check {
                name: "KVM capabilities",
                status: if missing.is_empty() {
                    Status::Ok
                } else {
                    Status::Fail
                },
                detail: if missing.is_empty() {
                    format!(
                        "all {} required present; up to {} vCPUs",
                        REQUIRED_CAPS.len(),
                        host.max_vcpus()
                    )
                } else {
                    format!("missing: {}", missing.join(", "))
                },
            });
            if measure {
                match measure_speeds(&host) {
                    Ok((k, u)) => {
                        let ratio = k.ns_per_iteration() / u.ns_per_iteration().max(1e-3);
                        kernel_speed = if ratio > EMULATION_RATIO {
                            GuestKernelSpeed::Emulated
                        } else {
                            GuestKernelSpeed::Native
                        };
                        checks.push(Check {
                            name: "guest CPU speed",
                            status: if kernel_speed == GuestKernelSpeed::Native {
                                Status::Ok
                            } else {
                                Status::Warn
                            },
                            detail: format!(
                                "user mode {:.2} ns/iter, kernel mode {:.2} ns/iter ({ratio:.0}x)",
                                u.ns_per_iteration(),
                                k.ns_per_iteration()
                            ),
                        });
                        speeds = Some((k, u));
                    }
                    Err(e) => checks.push(Check {
                        name: "guest CPU speed",
                        status: Status::Fail,
                        detail: format!("could not run a test VM: {e}"),
                    }),
                }
            }
        }
    }
    checks.push(check_io_uring());
    checks.push(check_tun());
    checks.push(check_netns());
    checks.push(check_ping_sockets());
    Report {
        checks,
        kernel_speed,
        speeds,
    }
}

fn measure_speeds(host: &KvmHost) -> Result<(LoopSpeed, LoopSpeed), crate::kvm::KvmError> {
    let user = speed::measure(host, Ring::User, USER_ITERATIONS)?;
    let kernel = speed::measure(host, Ring::Kernel, KERNEL_ITERATIONS)?;
    Ok((kernel, user))
}

fn check_io_uring() -> Check {
    // struct io_uring_params is 120 bytes; all-zero asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params`, a buffer of the kernel's struct size.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned to us by io_uring_setup and is closed once.
        unsafe { libc::close(fd as i32) };
        Check {
            name: "io_uring",
            status: Status::Ok,
            detail: "available".into(),
        }
    } else {
        let e = std::io::Error::last_os_error();
        Check {
            name: "io_uring",
            status: Status::Fail,
            detail: format!(
                "io_uring_setup failed: {e} (needs Linux 5.10+ and kernel.io_uring_disabled=0)"
            ),
        }
    }
}

fn check_tun() -> Check {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Check {
            name: "/dev/net/tun",
            status: Status::Ok,
            detail: "available (needed only for --net tap)".into(),
        },
        Err(e) => Check {
            name: "/dev/net/tun",
            status: Status::Warn,
            detail: format!(
                "cannot open: {e}; --net tap will not work (--net user does not need it)"
            ),
        },
    }
}

fn check_netns() -> Check {
    let result = std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) only changes this short-lived thread's namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .join();
    match result {
        Ok(Ok(())) => Check {
            name: "network namespaces",
            status: Status::Ok,
            detail: "can create (used by the network tests)".into(),
        },
        Ok(Err(e)) => Check {
            name: "network namespaces",
            status: Status::Warn,
            detail: format!("cannot create: {e}; network tests that need a namespace will skip"),
        },
        Err(_) => Check {
            name: "network namespaces",
            status: Status::Warn,
            detail: "the check thread failed".into(),
        },
    }
}

fn check_ping_sockets() -> Check {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    let allowed = range
        .split_once(' ')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .map(|(lo, hi)| lo <= gid && gid <= hi)
        .unwrap_or(false);
    Check {
        name: "ICMP ping sockets",
        status: if allowed { Status::Ok } else { Status::Warn },
        detail: if allowed {
            format!("allowed for group {gid} (net.ipv4.ping_group_range = {range})")
        } else {
            format!("disabled for group {gid} (net.ipv4.ping_group_range = \"{range}\"): guest pings to the outside need CAP_NET_RAW or that sysctl widened")
        },
    }
}
