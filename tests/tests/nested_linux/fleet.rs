//! The fleet scenarios' checks: drives (root on virtio-blk, a data drive both sides see, a
//! read-only drive), the agent over virtio-vsock, and Kata's Firecracker call sequence
//! ([`ringfence_tests::nested::fleet`]).

use ringfence_tests::nested::fleet::{HOTPLUG_MARKER, SANDBOX_STATUS};

use super::{assert_status, check, suite};

#[test]
fn a_linux_guest_boots_from_a_drive_and_reads_and_writes_drives() {
    let o = outcome!("drives");
    assert_status(o, 0);
    assert_eq!(check(o, "status"), "3", "{}", o.describe());
    // The kernel mounts the root it was given (root=/dev/vda) and calls it /dev/root.
    assert_eq!(
        check(o, "root"),
        "/dev/root ext4 root=/dev/vda",
        "{}",
        o.describe()
    );
    assert_eq!(check(o, "rootfs_write"), "ok", "{}", o.describe());
    // GET_ID carries the drive's id; the image's bytes reach the guest and back.
    assert_eq!(check(o, "serial"), "data-disk", "{}", o.describe());
    assert_eq!(check(o, "reads"), "host-data", "{}", o.describe());
    assert_eq!(check(o, "write"), "0", "{}", o.describe());
    assert_eq!(check(o, "host_reads"), "guest-written", "{}", o.describe());
    // A read-only drive is read-only to the guest's kernel and refuses a forced write.
    assert_eq!(check(o, "ro_flag"), "1", "{}", o.describe());
    assert_ne!(check(o, "ro_write"), "0", "{}", o.describe());
    assert_eq!(check(o, "ro_reads"), "readonly", "{}", o.describe());
    assert_eq!(check(o, "ro_unchanged"), "0", "{}", o.describe());
}

#[test]
fn the_agent_answers_over_vsock_while_the_guest_runs() {
    let o = outcome!("drives");
    let answer = check(o, "vsock_exec");
    assert!(
        answer.contains("data-disk") && answer.ends_with("EXIT 0"),
        "{answer}\n{}",
        o.describe()
    );
}

#[test]
fn kata_s_firecracker_call_sequence_runs_a_sandbox() {
    let o = outcome!("kata");
    assert_status(o, 0);
    let d = o.describe();
    assert_eq!(
        check(o, "version"),
        ringfence::api::FIRECRACKER_API_VERSION,
        "{d}"
    );
    assert_eq!(check(o, "started"), "200 \"Running\"", "{d}");
    assert_eq!(check(o, "flush_metrics"), "204", "{d}");
    assert!(check(o, "agent").starts_with("PONG_ringfence-agent"), "{d}");
    // The partitioned root drive, mounted read-only as Kata's kernel parameters ask.
    assert!(check(o, "root").starts_with("/dev/root ext4 ro"), "{d}");
    // PATCH /drives swaps a placeholder for a real file; the guest sees the new size.
    assert!(check(o, "patch").starts_with("204"), "{d}");
    assert_eq!(
        check(o, "hotplug"),
        format!("2048 {HOTPLUG_MARKER} EXIT 0"),
        "{d}"
    );
    assert!(check(o, "net").contains("hello from 192.0.2.10"), "{d}");
    // The guest's connection to host port 1025 reached the listener at kata.hvsock_1025, and
    // the guest's socat ended cleanly.
    let guest = check(o, "guest_initiated");
    assert!(
        guest.starts_with("hello-from-guest (") && guest.ends_with("EXIT 0)"),
        "{d}"
    );
    assert!(check(o, "stop").ends_with("EXIT 0"), "{d}");
    assert_eq!(check(o, "exit"), SANDBOX_STATUS.to_string(), "{d}");
    // Kata reads the logger and metrics FIFOs: both carried lines.
    assert_ne!(check(o, "log_lines"), "0", "{d}");
    assert_ne!(check(o, "metric_lines"), "0", "{d}");
}
