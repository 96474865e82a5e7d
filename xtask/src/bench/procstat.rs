//! CPU accounting from `/proc/<pid>/stat`: user, system and guest time, so that the host CPU a
//! VMM spends can be told apart from the time its vCPU threads spend running guest code (which
//! the kernel charges to the same process).

/// CPU time of one process, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    /// User time (includes guest time).
    pub user: f64,
    /// System time.
    pub system: f64,
    /// Time spent running guest code.
    pub guest: f64,
}

impl CpuTimes {
    /// Host CPU: user + system, less the guest's own execution.
    pub fn host(&self) -> f64 {
        (self.user + self.system - self.guest).max(0.0)
    }
}

/// Reads the CPU times of `pid`, or `None` if it is gone.
pub fn read(pid: u32) -> Option<CpuTimes> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse(&text, clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Parses a stat line: fields after the `(comm)` are counted from 3 (state).
fn parse(text: &str, hz: f64) -> Option<CpuTimes> {
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime 15, guest_time 43 (1-based, whole line).
    let get = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse::<f64>().ok() };
    Some(CpuTimes {
        user: get(14)? / hz,
        system: get(15)? / hz,
        guest: get(43).unwrap_or(0.0) / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_comm() {
        let mut fields = vec!["0"; 50];
        fields[14 - 3] = "250";
        fields[15 - 3] = "50";
        fields[43 - 3] = "200";
        let line = format!("123 (vcpu 0) {}", fields.join(" "));
        let t = parse(&line, 100.0).unwrap();
        assert_eq!((t.user, t.system, t.guest), (2.5, 0.5, 2.0));
        assert_eq!(t.host(), 1.0);
    }

    #[test]
    fn reads_our_own_process() {
        assert!(read(std::process::id()).is_some());
    }
}
