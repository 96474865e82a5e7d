//! `ringfence run` refuses bad TLS interception and secret settings before the guest boots,
//! naming the flag and the value to fix; and a good set boots the probe guest with the proxy
//! running (its CA written where asked).

mod common;

use common::*;
use ringfence_tests::harness::TempDir;

#[test]
fn bad_interception_settings_are_refused_before_boot() {
    let probe = match kvm_and_probe() {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let dir = TempDir::new("tls-cli");
    let junk = dir.file("junk.pem", b"not a certificate");
    let junk = junk.to_str().expect("utf-8 path");
    for (flags, needles) in [
        (
            vec!["--secret", "K=v@h.example"],
            vec!["need --tls-intercept"],
        ),
        (
            vec!["--tls-intercept", "--secret", "K=v"],
            vec!["--secret for K", "@HOST"],
        ),
        (
            vec!["--tls-intercept", "--secret", "K=v@"],
            vec!["allowed for no host"],
        ),
        (
            vec!["--tls-intercept", "--secret", "K=v@not a host"],
            vec!["bad host pattern"],
        ),
        (
            vec!["--tls-intercept", "--tls-bypass", "*."],
            vec!["--tls-bypass"],
        ),
        (
            vec!["--tls-intercept", "--secret-violation", "maybe"],
            vec!["block-and-log"],
        ),
        (
            vec![
                "--tls-intercept",
                "--tls-ca-cert",
                junk,
                "--tls-ca-key",
                junk,
            ],
            vec!["--tls-ca-cert", "does not parse"],
        ),
        (
            vec!["--tls-intercept", "--tls-upstream-ca", junk],
            vec!["--tls-upstream-ca", "junk.pem"],
        ),
        (
            vec![
                "--tls-intercept",
                "--tls-upstream-ca",
                "/nonexistent/ca.pem",
            ],
            vec!["/nonexistent/ca.pem"],
        ),
        (
            vec![
                "--tls-intercept",
                "--secret-file",
                "K=/nonexistent/key@h.example",
            ],
            vec!["/nonexistent/key"],
        ),
        (
            vec![
                "--tls-intercept",
                "--secret-env",
                "K=RF_SURELY_UNSET@h.example",
            ],
            vec!["RF_SURELY_UNSET"],
        ),
        (
            vec!["--tls-intercept", "--tls-ports", "none"],
            vec!["--tls-intercept needs a TLS port"],
        ),
    ] {
        let o = run_hello(&probe, &flags);
        // clap's own usage errors exit 2; ours 125. Both must say what to fix.
        if o.status.code() == Some(2) {
            let err = stderr(&o);
            assert!(needles.iter().all(|n| err.contains(n)), "{flags:?}: {err}");
            continue;
        }
        assert_refused(&o, &needles);
    }
}

#[test]
fn interception_boots_the_guest_and_writes_the_ca() {
    let probe = match kvm_and_probe() {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let dir = TempDir::new("tls-ca-out");
    let out = dir.path().join("ca.pem");
    let out_s = out.to_str().expect("utf-8 path");
    let o = run_hello(
        &probe,
        &[
            "--tls-intercept",
            "--tls-no-verify-upstream",
            "--secret",
            "K=v@h.example",
            "--tls-ca-out",
            out_s,
            "--net-stats",
        ],
    );
    assert_exit_ok(&o, "probe with --tls-intercept");
    let pem = std::fs::read_to_string(&out).expect("the CA was written");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(
        stderr(&o).contains("\"tls_proxy_flows\":0"),
        "{}",
        stderr(&o)
    );
}
