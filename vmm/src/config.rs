//! The typed VM configuration, parsed once at the edge (CLI or library caller) and validated
//! against the host before anything is created.

use std::path::PathBuf;
use std::time::Duration;

use crate::io::serial::ConsoleSink;
use crate::layout::MAX_MEM_MIB;
use crate::net::NetSettings;

/// Default guest memory in MiB.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;
/// Most vCPUs the MP table and APIC ids we build can describe.
pub const MAX_VCPUS: u8 = 254;
/// Default nice value of the vCPU threads (see [`VmConfig::vcpu_nice`]).
pub const DEFAULT_VCPU_NICE: u8 = 0;
/// Highest nice value Linux knows.
pub const MAX_NICE: u8 = 19;

/// Where the guest's serial output goes.
pub enum Console {
    /// The VMM's stdout.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// Any writer (library embedders capture output this way).
    Sink(ConsoleSink),
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Console::Stdout => write!(f, "Stdout"),
            Console::File(p) => write!(f, "File({})", p.display()),
            Console::Sink(_) => write!(f, "Sink"),
        }
    }
}

/// Everything needed to build and run one VM.
#[derive(Debug)]
pub struct VmConfig {
    /// PVH ELF or bzImage kernel.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Serial console destination.
    pub console: Console,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Append `probe.tsc_khz=<KVM's guest TSC rate>` to the command line (the probe guest
    /// uses it as its clock rate).
    pub pass_tsc_khz: bool,
    /// Create the in-kernel i8254 PIT. Linux guests may calibrate against it; the probe guest
    /// does not need it, and on nested hosts its teardown adds ~10 ms to every VM exit.
    pub legacy_pit: bool,
    /// Guest networking.
    pub net: NetSettings,
    /// virtio-blk drives, in window order ([`crate::block`]).
    pub drives: Vec<crate::block::DriveSettings>,
    /// A virtio-vsock device ([`crate::vsock`]).
    pub vsock: Option<crate::vsock::VsockSettings>,
    /// Nice value of the vCPU threads (0..=19), relative to the VMM's device threads, which
    /// stay at the process's own. Above 0, work the guest is waiting for (a device thread
    /// moving its packets) preempts a vCPU at once instead of queueing behind it, on a host
    /// with fewer free cores than busy threads; the price is that the guest yields to every
    /// other host process at the normal nice level too.
    pub vcpu_nice: u8,
    /// Per-thread seccomp filters (on by default; see docs/security.md). With filters on,
    /// [`crate::Vm::run`] filters the thread that calls it for good: embedders run it on a
    /// thread of its own.
    pub seccomp: crate::sandbox::SeccompMode,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: DEFAULT_VCPUS,
            console: Console::Stdout,
            timeout: None,
            pass_tsc_khz: false,
            legacy_pit: true,
            net: NetSettings::default(),
            drives: Vec::new(),
            vsock: None,
            vcpu_nice: DEFAULT_VCPU_NICE,
            seccomp: crate::sandbox::SeccompMode::On,
        }
    }
}

/// A configuration value the host cannot satisfy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--mem 0`.
    #[error("--mem must be at least 1 MiB (got 0)")]
    ZeroMemory,
    /// More memory than the host has, or than ringfence supports.
    #[error("--mem {asked} MiB is more than {limit} MiB ({why})")]
    TooMuchMemory {
        /// MiB asked for.
        asked: u64,
        /// The limit.
        limit: u64,
        /// Where the limit comes from.
        why: &'static str,
    },
    /// `--vcpus 0`.
    #[error("--vcpus must be at least 1 (got 0)")]
    ZeroVcpus,
    /// More vCPUs than the host or ringfence allows.
    #[error("--vcpus {asked} is more than {limit} ({why})")]
    TooManyVcpus {
        /// vCPUs asked for.
        asked: u32,
        /// The limit.
        limit: u32,
        /// Where the limit comes from.
        why: &'static str,
    },
    /// `--timeout` that is zero, negative or not a number.
    #[error("--timeout must be a positive number of seconds (got {0})")]
    BadTimeout(String),
}

/// Checks memory and vCPU counts against ringfence's and the host's limits.
pub fn validate_resources(
    mem_mib: u64,
    vcpus: u32,
    host_mem_mib: Option<u64>,
    host_max_vcpus: usize,
) -> Result<(), ConfigError> {
    if mem_mib == 0 {
        return Err(ConfigError::ZeroMemory);
    }
    if mem_mib > MAX_MEM_MIB {
        return Err(ConfigError::TooMuchMemory {
            asked: mem_mib,
            limit: MAX_MEM_MIB,
            why: "ringfence's limit",
        });
    }
    if let Some(host) = host_mem_mib {
        if mem_mib > host {
            return Err(ConfigError::TooMuchMemory {
                asked: mem_mib,
                limit: host,
                why: "the host's total memory",
            });
        }
    }
    if vcpus == 0 {
        return Err(ConfigError::ZeroVcpus);
    }
    if vcpus > u32::from(MAX_VCPUS) {
        return Err(ConfigError::TooManyVcpus {
            asked: vcpus,
            limit: u32::from(MAX_VCPUS),
            why: "ringfence's limit",
        });
    }
    if vcpus as usize > host_max_vcpus {
        return Err(ConfigError::TooManyVcpus {
            asked: vcpus,
            limit: host_max_vcpus as u32,
            why: "KVM's vCPU limit on this host",
        });
    }
    Ok(())
}

/// Parses a `--timeout` value in seconds (fractions allowed).
pub fn parse_timeout(text: &str) -> Result<Duration, ConfigError> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() && secs < 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(ConfigError::BadTimeout(text.to_string())),
    }
}

/// Total host memory in MiB from /proc/meminfo.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_limits_are_enforced_with_reasons() {
        assert_eq!(
            validate_resources(0, 1, Some(1024), 2),
            Err(ConfigError::ZeroMemory)
        );
        assert!(validate_resources(2048, 1, Some(1024), 2)
            .unwrap_err()
            .to_string()
            .contains("host's total memory"));
        assert_eq!(
            validate_resources(128, 0, None, 2),
            Err(ConfigError::ZeroVcpus)
        );
        assert!(validate_resources(128, 3, None, 2)
            .unwrap_err()
            .to_string()
            .contains("--vcpus 3 is more than 2"));
        assert!(validate_resources(128, 2, Some(1024), 2).is_ok());
    }

    #[test]
    fn timeouts_parse_or_explain() {
        assert_eq!(parse_timeout("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-3").is_err());
        assert!(parse_timeout("soon")
            .unwrap_err()
            .to_string()
            .contains("soon"));
    }

    #[test]
    fn host_memory_is_readable_here() {
        assert!(host_memory_mib().unwrap_or(1) > 0);
    }
}
