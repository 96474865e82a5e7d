//! The proxy end to end on loopback: a "guest" TLS client (hyper over tokio-rustls) on one
//! end of the socket pair the netstack would hand over, the proxy in its worker thread, and
//! an HTTPS upstream on 127.0.0.1 with its own test CA that reports what it received.
//! (`netstack_handoff.rs` drives the same proxy through the netstack with a smoltcp guest.)

mod common;

use common::*;
use tlsproxy::{SecretSpec, ViolationMode};

#[test]
fn the_guest_sees_our_ca_and_the_upstream_is_verified() {
    let up = Upstream::start("api.example.test", Alpn::Both);
    let env = ProxyEnv::start(up.ca_pem(), |_| {});
    // Trusting only the proxy's CA works: the certificate is ours.
    let r = env.request(
        &up,
        "api.example.test",
        Alpn::H1,
        get("api.example.test", &[]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen.as_ref().map(|s| s.uri.as_str()), Some("/path?q=1"));
    // Trusting only the upstream's CA fails: the guest never sees the upstream's certificate.
    let e = env.request_trusting(
        &up,
        "api.example.test",
        Alpn::H1,
        &up.ca_pem(),
        get("api.example.test", &[]),
    );
    assert!(e.error.is_some(), "{e:?}");
    let s = env.stats();
    assert!(stat(&s, "tls_proxy_guest_handshakes") >= 1);
}

#[test]
fn a_wrong_upstream_certificate_is_refused_and_never_shown() {
    // The upstream's certificate names another host: verification for the SNI fails.
    let up = Upstream::start("other.example.test", Alpn::Both);
    let env = ProxyEnv::start(up.ca_pem(), |_| {});
    let r = env.request(
        &up,
        "api.example.test",
        Alpn::H1,
        get("api.example.test", &[]),
    );
    assert!(r.error.is_some(), "{r:?}");
    assert_eq!(stat(&env.stats(), "tls_proxy_upstream_verify_failed"), 1);
    assert!(up.seen().is_empty());
    // With verification off the flow passes, but secrets are never sent on it.
    let env = ProxyEnv::start_unverified(|c| {
        c.secrets = secrets("K=s3cr3t@api.example.test");
    });
    let ph = env.placeholder("K");
    let r = env.request(
        &up,
        "api.example.test",
        Alpn::H1,
        get("api.example.test", &[("authorization", &ph)]),
    );
    assert_eq!(r.status, 403, "{r:?}");
    let r = env.request(
        &up,
        "api.example.test",
        Alpn::H1,
        get("api.example.test", &[]),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn secrets_are_swapped_in_for_their_hosts_over_http1_and_http2() {
    let up = Upstream::start("api.example.test", Alpn::Both);
    let env = ProxyEnv::start(up.ca_pem(), |c| {
        c.secrets = secrets("API_KEY=s3cr3t-value@*.example.test");
    });
    let ph = env.placeholder("API_KEY");
    for alpn in [Alpn::H1, Alpn::H2] {
        // Header and target.
        let r = env.request(
            &up,
            "api.example.test",
            alpn,
            get_path(
                "api.example.test",
                &format!("/v1?key={ph}"),
                &[("authorization", &format!("Bearer {ph}"))],
            ),
        );
        assert_eq!(r.status, 200, "{alpn:?} {r:?}");
        let seen = r.seen.expect("upstream saw the request");
        assert_eq!(seen.version, alpn.version());
        assert_eq!(seen.authorization.as_deref(), Some("Bearer s3cr3t-value"));
        assert_eq!(seen.uri, "/v1?key=s3cr3t-value");
        // A body with a Content-Length: replaced and the length fixed up.
        let body = format!("{{\"key\":\"{ph}\",\"n\":1}}");
        let r = env.request(
            &up,
            "api.example.test",
            alpn,
            post("api.example.test", body.into_bytes(), false),
        );
        let seen = r.seen.expect("upstream saw the POST");
        assert_eq!(seen.body, b"{\"key\":\"s3cr3t-value\",\"n\":1}");
        assert_eq!(seen.content_length, Some(seen.body.len() as u64));
        // A streamed (chunked) body with placeholders across chunk boundaries.
        let big = format!("{}{ph}{}", "a".repeat(70_000), "b".repeat(70_000)).into_bytes();
        let r = env.request(
            &up,
            "api.example.test",
            alpn,
            post("api.example.test", big, true),
        );
        let seen = r.seen.expect("upstream saw the streamed POST");
        let want = format!("{}s3cr3t-value{}", "a".repeat(70_000), "b".repeat(70_000));
        assert_eq!(seen.body.len(), want.len(), "{alpn:?}");
        assert!(
            seen.body == want.as_bytes(),
            "{alpn:?}: streamed body differs"
        );
    }
    assert!(stat(&env.stats(), "tls_proxy_secrets_substituted") >= 8);
    assert_eq!(stat(&env.stats(), "tls_proxy_secret_violations"), 0);
}

#[test]
fn a_placeholder_for_another_host_is_cut_and_never_sent() {
    let up = Upstream::start("api.example.test", Alpn::Both);
    for mode in [
        ViolationMode::Block,
        ViolationMode::BlockAndLog,
        ViolationMode::Terminate,
    ] {
        let env = ProxyEnv::start(up.ca_pem(), |c| {
            c.secrets = secrets("API_KEY=s3cr3t@models.example.test");
            c.violation = mode;
        });
        let ph = env.placeholder("API_KEY");
        let before = up.seen().len();
        for alpn in [Alpn::H1, Alpn::H2] {
            let r = env.request(
                &up,
                "api.example.test",
                alpn,
                get("api.example.test", &[("x-key", &ph)]),
            );
            assert_eq!(r.status, 403, "{mode:?} {alpn:?} {r:?}");
            assert!(r.body.contains("API_KEY"), "{}", r.body);
            let r = env.request(
                &up,
                "api.example.test",
                alpn,
                post("api.example.test", ph.clone().into_bytes(), false),
            );
            assert_eq!(r.status, 403, "{mode:?} {alpn:?} {r:?}");
        }
        assert_eq!(
            up.seen().len(),
            before,
            "the upstream received a request carrying a placeholder"
        );
        assert_eq!(stat(&env.stats(), "tls_proxy_secret_violations"), 4);
        assert_eq!(env.terminated(), mode == ViolationMode::Terminate);
    }
}

#[test]
fn domain_fronting_is_refused() {
    let up = Upstream::start("api.example.test", Alpn::Both);
    let env = ProxyEnv::start(up.ca_pem(), |_| {});
    for alpn in [Alpn::H1, Alpn::H2] {
        let r = env.request(&up, "api.example.test", alpn, get("evil.example.test", &[]));
        assert_eq!(r.status, 421, "{alpn:?} {r:?}");
        let r = env.request(
            &up,
            "api.example.test",
            alpn,
            get("API.example.test:443", &[]),
        );
        assert_eq!(r.status, 200, "{alpn:?} {r:?}");
    }
    assert_eq!(stat(&env.stats(), "tls_proxy_fronting_refused"), 2);
}

#[test]
fn alpn_is_carried_through() {
    let up = Upstream::start("api.example.test", Alpn::H1);
    let env = ProxyEnv::start(up.ca_pem(), |_| {});
    // The guest offers h2 and http/1.1; the upstream only speaks http/1.1: so does the guest.
    let r = env.request(
        &up,
        "api.example.test",
        Alpn::Both,
        get("api.example.test", &[]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.negotiated.as_deref(), Some(&b"http/1.1"[..]));
    let up2 = Upstream::start("api.example.test", Alpn::Both);
    let env2 = ProxyEnv::start(up2.ca_pem(), |_| {});
    let r = env2.request(
        &up2,
        "api.example.test",
        Alpn::Both,
        get("api.example.test", &[]),
    );
    assert_eq!(r.negotiated.as_deref(), Some(&b"h2"[..]), "{r:?}");
}

#[test]
fn bad_secret_and_ca_input_is_refused_with_the_reason() {
    assert!("K=v@"
        .parse::<SecretSpec>()
        .unwrap_err()
        .contains("no host"));
    let e = tlsproxy::CertAuthority::from_pem(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "junk",
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not parse"), "{e}");
    let e = tlsproxy::UpstreamTrust::new(&[("empty.pem".into(), b"no pem here".to_vec())], true)
        .unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");
}

#[test]
fn a_websocket_style_upgrade_is_relayed_with_secrets_rewritten_or_refused() {
    let up = Upstream::start("api.example.test", Alpn::H1);
    let env = ProxyEnv::start(up.ca_pem(), |c| {
        c.secrets = secrets("API_KEY=real-value@api.example.test");
    });
    let ph = env.placeholder("API_KEY");
    // The echo shows what reached the upstream: the value, in place of the placeholder.
    let got = env
        .upgrade_echo(
            &up,
            "api.example.test",
            format!("auth {ph}!").as_bytes(),
            16,
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "auth real-value!");
    let plain = env
        .upgrade_echo(&up, "api.example.test", b"no secret here", 14)
        .unwrap();
    assert_eq!(plain, b"no secret here");
    // For a host the secret is not for, the upgraded stream is cut before the bytes leave.
    let env2 = ProxyEnv::start(up.ca_pem(), |c| {
        c.secrets = secrets("API_KEY=real-value@models.example.test");
    });
    let ph2 = env2.placeholder("API_KEY");
    let got = env2
        .upgrade_echo(&up, "api.example.test", format!("auth {ph2}").as_bytes(), 1)
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(stat(&env2.stats(), "tls_proxy_secret_violations"), 1);
}
