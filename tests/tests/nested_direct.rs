//! The nested harness's direct mode (`ringfence_tests::nested::direct`), the way hosts with
//! hardware virtualization run the Linux scenarios: checked here with scenarios that boot no
//! guest (this host's KVM cannot run a guest kernel at speed; the Linux scenarios run in the
//! outer VM, tests/tests/nested_linux.rs). What is proven: the runner starts its servers in
//! namespaces of its own, results come back with status, output and deadlines, and the host's
//! network and `/etc/resolv.conf` are untouched; started in the host's namespaces it refuses.

use std::path::PathBuf;
use std::process::Command;

use ringfence_tests::nested::direct;
use ringfence_tests::nested::scenario::Scenario;

fn skip(why: &str) {
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED: {why}\n"));
    // uncaptured, so CI logs show it
}

/// Root and `unshare` (util-linux), or why not.
fn can_unshare() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err("direct mode needs root (network and mount namespaces)".into());
    }
    Command::new("unshare")
        .arg("--version")
        .output()
        .map_err(|e| format!("no unshare (util-linux): {e}"))
        .map(drop)
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rf-nested"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn logs(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/nested/{name}"))
}

fn host_has_link(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn scenarios_run_in_namespaces_of_their_own_and_report_back() {
    if let Err(why) = can_unshare() {
        return skip(&why);
    }
    let resolv_before = std::fs::read("/etc/resolv.conf").ok();
    let host_ns = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    let scenarios = [
        Scenario::new(
            "services",
            "echo \"CHECK http $(rf-nested get 192.0.2.10:8080 20)\"
echo \"CHECK resolv $(cat /etc/resolv.conf)\"
echo \"CHECK netns $(readlink /proc/self/ns/net)\"
echo \"CHECK dummy $(ip -o addr show dev rf-test | grep -c -e 192.0.2.1 -e 10.1.2.3 -e 169.254.169.254 -e 2001:db8::10)\"",
        )
        .timeout(60),
        Scenario::new("status", "echo out; echo err >&2; exit 3").timeout(30),
        Scenario::new("deadline", "sleep 100").timeout(2),
    ];
    let run = direct::run_suite(&bin_dir(), &scenarios, &logs("direct-test"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.early_end, None, "the runner ended badly");
    let setup = run.outcome("_setup").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(setup.status, Some(0), "{}", setup.describe());

    let s = run.outcome("services").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.status, Some(0), "{}", s.describe());
    assert_eq!(s.check("http").unwrap(), "hello from 192.0.2.10");
    assert_eq!(s.check("resolv").unwrap(), "nameserver 127.0.0.1");
    assert_ne!(
        s.check("netns").unwrap(),
        host_ns.display().to_string(),
        "the scenario ran in the host's network namespace"
    );
    assert_eq!(s.check("dummy").unwrap(), "5", "{}", s.describe());

    let s = run.outcome("status").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.status, Some(3));
    assert_eq!((s.stdout.trim(), s.stderr.trim()), ("out", "err"));

    let s = run.outcome("deadline").unwrap_or_else(|e| panic!("{e}"));
    assert!(s.timed_out, "{}", s.describe());

    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        resolv_before,
        "the host's /etc/resolv.conf changed"
    );
    assert!(
        !host_has_link("rf-test"),
        "the dummy interface leaked into the host"
    );
}

#[test]
fn the_runner_refuses_the_hosts_own_namespaces() {
    if let Err(why) = can_unshare() {
        return skip(&why);
    }
    let dir = logs("direct-refusal");
    std::fs::create_dir_all(&dir).expect("log dir");
    let list = dir.join("list.json");
    std::fs::write(&list, "[]").expect("list");
    let results = dir.join("results.jsonl");
    std::fs::write(&results, "").expect("results");
    let out = Command::new(bin_dir().join("rf-nested"))
        .args(["run", "--direct"])
        .arg(&list)
        .arg(&results)
        .output()
        .expect("run rf-nested");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("namespaces of its own"),
        "unexpected message: {err}"
    );
    assert!(!host_has_link("rf-test"));
    assert_eq!(std::fs::read(&results).ok().as_deref(), Some(&b""[..]));
}
