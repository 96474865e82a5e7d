//! How the command's end becomes the status the VMM reports.
//!
//! The agent writes one 32-bit value to port 0xf4; `ringfence run` exits with its low byte.
//! The mapping follows the shell: exit code as is, death by signal N as 128 + N, 127 when the
//! program does not exist, 126 when it cannot be executed, and 125 when the agent itself could
//! not set up the guest or parse its command line (the reason is printed on the console first).
//! The same value under QEMU's `isa-debug-exit` ends QEMU with `(value << 1) | 1`.

/// The exit port.
pub const EXIT_PORT: u16 = 0xf4;
/// The agent could not set up the guest or understand its parameters.
pub const AGENT_FAILURE: u8 = 125;
/// The program exists but cannot be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// The program does not exist.
pub const NOT_FOUND: u8 = 127;

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with a code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It could not be started (errno from exec).
    SpawnFailed(i32),
}

/// The status byte for `outcome`.
pub fn encode(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Exited(code) => (code & 0xff) as u8,
        Outcome::Signaled(sig) => 128u8.wrapping_add((sig & 0x7f) as u8),
        Outcome::SpawnFailed(errno) if errno == libc::ENOENT => NOT_FOUND,
        Outcome::SpawnFailed(_) => NOT_EXECUTABLE,
    }
}

/// Decodes a raw `waitpid` status.
pub fn from_wait_status(status: i32) -> Outcome {
    if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_shell_convention() {
        assert_eq!(encode(Outcome::Exited(0)), 0);
        assert_eq!(encode(Outcome::Exited(3)), 3);
        assert_eq!(encode(Outcome::Exited(256 + 7)), 7);
        assert_eq!(encode(Outcome::Signaled(9)), 137);
        assert_eq!(encode(Outcome::SpawnFailed(libc::ENOENT)), NOT_FOUND);
        assert_eq!(encode(Outcome::SpawnFailed(libc::EACCES)), NOT_EXECUTABLE);
    }

    #[test]
    fn wait_statuses_decode() {
        // Raw encodings: exit code in bits 8-15; signal in bits 0-6.
        assert_eq!(from_wait_status(5 << 8), Outcome::Exited(5));
        assert_eq!(from_wait_status(15), Outcome::Signaled(15));
    }

    #[test]
    fn real_children_report_real_statuses() {
        let st = std::process::Command::new("sh")
            .args(["-c", "exit 42"])
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(encode(from_wait_status(st.into_raw())), 42);
        let st = std::process::Command::new("sh")
            .args(["-c", "kill -TERM $$"])
            .status()
            .unwrap();
        assert_eq!(encode(from_wait_status(st.into_raw())), 128 + 15);
    }
}
