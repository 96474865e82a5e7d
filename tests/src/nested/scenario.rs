//! A nested-harness scenario and its result, and their JSON forms (the host writes the list
//! into the outer VM through QEMU's fw_cfg; the runner answers with one line per scenario).

use serde_json::{json, Value};

/// Prefix of every result line on the outer VM's result port.
pub const RESULT_PREFIX: &str = "RFNESTED ";

/// One scenario: a shell script run by the outer VM's busybox `sh`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Unique name (a test looks its result up by it).
    pub name: String,
    /// The outer-VM script. `$RF_INITRD` names the Linux image's initramfs with
    /// [`Scenario::guest_files`] appended, `$RF_DIR` a scratch directory of its own.
    pub script: String,
    /// Files added to the guest's initramfs: (absolute path, contents); made executable.
    pub guest_files: Vec<(String, String)>,
    /// The runner kills the script's process group after this many seconds.
    pub timeout_secs: u64,
}

impl Scenario {
    /// A scenario with no guest files and a 60 s limit.
    pub fn new(name: &str, script: &str) -> Self {
        Scenario {
            name: name.into(),
            script: script.into(),
            guest_files: Vec::new(),
            timeout_secs: 60,
        }
    }

    /// Adds a guest file (builder style).
    pub fn guest_file(mut self, path: &str, contents: &str) -> Self {
        self.guest_files.push((path.into(), contents.into()));
        self
    }

    /// Sets the time limit (builder style).
    pub fn timeout(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// The JSON object the runner reads.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "script": self.script,
            "guest_files": self.guest_files,
            "timeout_secs": self.timeout_secs,
        })
    }

    /// Parses one object of the list; says which field is wrong.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| format!("scenario field {k:?} is missing or not a string"))
        };
        let mut guest_files = Vec::new();
        for f in v
            .get("guest_files")
            .and_then(Value::as_array)
            .ok_or("scenario field \"guest_files\" is missing")?
        {
            match (
                f.get(0).and_then(Value::as_str),
                f.get(1).and_then(Value::as_str),
            ) {
                (Some(p), Some(c)) if p.starts_with('/') => guest_files.push((p.into(), c.into())),
                _ => {
                    return Err(format!(
                        "bad guest file entry {f}: expected [\"/path\", \"text\"]"
                    ))
                }
            }
        }
        Ok(Scenario {
            name: text("name")?,
            script: text("script")?,
            guest_files,
            timeout_secs: v
                .get("timeout_secs")
                .and_then(Value::as_u64)
                .ok_or("scenario field \"timeout_secs\" is missing")?,
        })
    }
}

/// What one scenario did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The scenario's name.
    pub name: String,
    /// The script's exit status (`None` when a signal or the deadline ended it).
    pub status: Option<i32>,
    /// Whether the runner had to kill it at its deadline.
    pub timed_out: bool,
    /// Wall time, seconds (emulated: for progress output, never for assertions).
    pub secs: f64,
    /// Everything the script wrote to stdout (the guest console, through ringfence).
    pub stdout: String,
    /// Everything it wrote to stderr (ringfence's own messages).
    pub stderr: String,
}

impl Outcome {
    /// The result line's JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "status": self.status,
            "timed_out": self.timed_out,
            "secs": self.secs,
            "stdout": self.stdout,
            "stderr": self.stderr,
        })
    }

    /// Parses a result line's JSON.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let name = text("name");
        if name.is_empty() {
            return Err(format!("result without a name: {v}"));
        }
        Ok(Outcome {
            name,
            status: v.get("status").and_then(Value::as_i64).map(|s| s as i32),
            timed_out: v.get("timed_out").and_then(Value::as_bool).unwrap_or(false),
            secs: v.get("secs").and_then(Value::as_f64).unwrap_or(0.0),
            stdout: text("stdout"),
            stderr: text("stderr"),
        })
    }

    /// Values of the `CHECK <key> <value...>` lines the guest printed, in order.
    pub fn checks(&self, key: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("CHECK "))
            .filter_map(|l| {
                let (k, v) = l.split_once(' ').unwrap_or((l, ""));
                (k == key).then(|| v.trim().to_string())
            })
            .collect()
    }

    /// The single value of check `key`, or a message naming what was printed instead.
    pub fn check(&self, key: &str) -> Result<String, String> {
        match self.checks(key).as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!(
                "scenario {}: expected one `CHECK {key}` line, found {other:?}\n{}",
                self.name,
                self.describe()
            )),
        }
    }

    /// A readable dump for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "--- scenario {} (status {:?}, timed out {}, {:.1} s)\n--- stdout:\n{}\n--- stderr:\n{}",
            self.name, self.status, self.timed_out, self.secs, self.stdout, self.stderr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_and_outcomes_round_trip_through_json() {
        let s = Scenario::new("a", "echo hi")
            .guest_file("/t.sh", "exit 3")
            .timeout(9);
        assert_eq!(Scenario::from_json(&s.to_json()).unwrap(), s);
        let o = Outcome {
            name: "a".into(),
            status: Some(7),
            stdout: "x\nCHECK dhcp 172.16.0.2/30\r\nCHECK n 1\nCHECK n 2\n".into(),
            ..Default::default()
        };
        let back = Outcome::from_json(&o.to_json()).unwrap();
        assert_eq!(back, o);
        assert_eq!(back.check("dhcp").unwrap(), "172.16.0.2/30");
        assert_eq!(back.checks("n"), vec!["1", "2"]);
        assert!(back.check("n").is_err());
        assert!(back.check("missing").is_err());
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_field_named() {
        let mut v = Scenario::new("a", "true").to_json();
        v["guest_files"] = json!([["relative", "x"]]);
        assert!(Scenario::from_json(&v).unwrap_err().contains("relative"));
        v["guest_files"] = json!([]);
        v.as_object_mut().unwrap().remove("script");
        assert!(Scenario::from_json(&v).unwrap_err().contains("script"));
    }
}
