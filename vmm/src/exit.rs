//! Why a VM stopped, and how that maps to the `ringfence run` exit status.

use std::fmt;

/// Exit status ringfence uses when the guest did not exit within `--timeout`.
pub const STATUS_TIMEOUT: i32 = 124;
/// Exit status for ringfence's own failures (bad input, KVM errors).
pub const STATUS_VMM_ERROR: i32 = 125;
/// Exit status when the guest crashed or stopped without reporting a status.
pub const STATUS_GUEST_CRASH: i32 = 126;
/// Exit status of a VM its embedder killed (as for a process killed by SIGKILL).
pub const STATUS_KILLED: i32 = 128 + 9;

/// The reason a VM stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum VmExit {
    /// The guest wrote its status to the exit port (0xf4).
    GuestStatus(u32),
    /// The guest asked for a reset (i8042 pulse, or KVM system event reset).
    Reset,
    /// The guest powered off through a KVM system event.
    PowerOff,
    /// The vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// Index of the faulting vCPU.
        vcpu: u8,
        /// Its instruction pointer, when it could be read.
        rip: Option<u64>,
    },
    /// The vCPU halted with interrupts disabled: it can never run again.
    DeadHalt {
        /// Index of the halted vCPU.
        vcpu: u8,
        /// Its instruction pointer.
        rip: u64,
    },
    /// The guest kernel panicked (it printed Linux's panic line, then rebooted or hung).
    GuestPanic {
        /// The panic line from the console.
        message: String,
    },
    /// `--timeout` expired.
    Timeout {
        /// The limit, in seconds.
        secs: f64,
    },
    /// The VMM received a signal (Ctrl-C, SIGTERM).
    Signal(i32),
    /// The embedder stopped the VM ([`crate::VmHandle::kill`], or dropping the handle).
    Killed,
    /// KVM reported something the VMM cannot continue from.
    Internal(String),
    /// The guest sent a secret's placeholder towards a host the secret is not for, under
    /// `--secret-violation terminate`.
    SecretViolation {
        /// The secret's guest variable.
        secret: String,
        /// The host it was headed to.
        host: String,
    },
}

impl VmExit {
    /// The process exit status `ringfence run` uses for this exit.
    pub fn status(&self) -> i32 {
        match self {
            VmExit::GuestStatus(v) => (*v & 0xff) as i32,
            VmExit::Reset | VmExit::PowerOff => 0,
            VmExit::TripleFault { .. } | VmExit::DeadHalt { .. } | VmExit::GuestPanic { .. } => {
                STATUS_GUEST_CRASH
            }
            VmExit::Timeout { .. } => STATUS_TIMEOUT,
            VmExit::Signal(sig) => 128 + sig,
            VmExit::Killed | VmExit::SecretViolation { .. } => STATUS_KILLED,
            VmExit::Internal(_) => STATUS_VMM_ERROR,
        }
    }

    /// The status the guest itself reported through the exit port, if it did.
    pub fn guest_status(&self) -> Option<u32> {
        match self {
            VmExit::GuestStatus(v) => Some(*v),
            _ => None,
        }
    }

    /// Whether the exit deserves a line on stderr (anything but a status the guest chose).
    pub fn is_abnormal(&self) -> bool {
        !matches!(
            self,
            VmExit::GuestStatus(_) | VmExit::PowerOff | VmExit::Reset
        )
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::GuestStatus(v) => write!(f, "guest exited with status {v}"),
            VmExit::Reset => write!(f, "guest requested a reset"),
            VmExit::GuestPanic { message } => {
                write!(f, "the guest kernel panicked: {message}")
            }
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::TripleFault { vcpu, rip: Some(rip) } => {
                write!(f, "vCPU {vcpu} triple-faulted (last RIP {rip:#x}); the guest crashed")
            }
            VmExit::TripleFault { vcpu, rip: None } => {
                write!(f, "vCPU {vcpu} triple-faulted; the guest crashed")
            }
            VmExit::DeadHalt { vcpu, rip } => write!(
                f,
                "vCPU {vcpu} halted with interrupts disabled at RIP {rip:#x}; the guest can never continue"
            ),
            VmExit::Timeout { secs } => {
                write!(f, "guest did not exit within {secs} s (--timeout); stopped it")
            }
            VmExit::Signal(sig) => write!(f, "stopped by signal {sig}"),
            VmExit::Killed => write!(f, "stopped by its embedder (VmHandle::kill)"),
            VmExit::Internal(why) => write!(f, "VM stopped: {why}"),
            VmExit::SecretViolation { secret, host } => write!(
                f,
                "stopped: the guest sent the placeholder of secret {secret} towards {host}, which it is not allowed for (--secret-violation terminate)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_documented_convention() {
        assert_eq!(VmExit::GuestStatus(7).status(), 7);
        assert_eq!(VmExit::GuestStatus(0x1ff).status(), 0xff);
        assert_eq!(VmExit::Timeout { secs: 1.0 }.status(), STATUS_TIMEOUT);
        assert_eq!(VmExit::Signal(2).status(), 130);
        assert_eq!(
            VmExit::TripleFault { vcpu: 0, rip: None }.status(),
            STATUS_GUEST_CRASH
        );
        assert!(!VmExit::GuestStatus(3).is_abnormal());
        assert!(VmExit::DeadHalt { vcpu: 0, rip: 0 }.is_abnormal());
    }
}
