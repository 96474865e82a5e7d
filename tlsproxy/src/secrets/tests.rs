use super::*;

fn set(hosts: &str) -> SecretSet {
    let spec: SecretSpec = format!("API_KEY=s3cr3t@{hosts}").parse().unwrap();
    SecretSet::new(vec![spec.resolve().unwrap()])
}

#[test]
fn placeholders_are_replaced_only_for_verified_allowed_hosts() {
    let s = set("api.example.com,*.models.example");
    let ph = s.iter().next().unwrap().placeholder().to_string();
    assert_eq!(ph.len(), PLACEHOLDER_LEN);
    let req = format!("Authorization: Bearer {ph}\r\nX: {ph}");
    match s.rewrite(req.as_bytes(), "api.example.com", true) {
        Rewrite::Changed(out, 2) => {
            assert_eq!(out, b"Authorization: Bearer s3cr3t\r\nX: s3cr3t");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.rewrite(req.as_bytes(), "eu.models.example", true),
        Rewrite::Changed(_, 2)
    ));
    assert_eq!(
        s.rewrite(req.as_bytes(), "evil.example", true),
        Rewrite::Violation(Violation {
            env: "API_KEY".into(),
            host: "evil.example".into()
        })
    );
    // An unverified upstream never gets the value, even for an allowed name.
    assert!(matches!(
        s.rewrite(req.as_bytes(), "api.example.com", false),
        Rewrite::Violation(_)
    ));
    assert_eq!(
        s.rewrite(b"rf_secret_not-a-placeholder", "x.example", true),
        Rewrite::Unchanged
    );
}

#[test]
fn a_placeholder_split_across_pieces_is_found_at_every_split() {
    let s = set("api.example.com");
    let ph = s.iter().next().unwrap().placeholder().to_string();
    let body = format!("{{\"key\":\"{ph}\",\"again\":\"{ph}\"}}");
    let want = "{\"key\":\"s3cr3t\",\"again\":\"s3cr3t\"}";
    for split in 0..=body.len() {
        let mut w = StreamRewriter::default();
        let mut out = w
            .feed(&s, &body.as_bytes()[..split], "api.example.com", true)
            .unwrap();
        out.extend(
            w.feed(&s, &body.as_bytes()[split..], "api.example.com", true)
                .unwrap(),
        );
        out.extend(w.finish(&s, "api.example.com", true).unwrap());
        assert_eq!(String::from_utf8(out).unwrap(), want, "split {split}");
        assert_eq!(w.replaced, 2);
        let mut bad = StreamRewriter::default();
        let verdict = bad
            .feed(&s, &body.as_bytes()[..split], "evil.example", true)
            .and_then(|_| bad.feed(&s, &body.as_bytes()[split..], "evil.example", true))
            .and_then(|_| bad.finish(&s, "evil.example", true));
        assert!(verdict.is_err(), "split {split}");
    }
}

#[test]
fn secret_specs_parse_or_say_what_to_write() {
    let spec: SecretSpec = "K=a@b@api.example.com, *.example.org".parse().unwrap();
    assert_eq!(spec.source, SecretSource::Literal("a@b".into()));
    assert_eq!(spec.hosts.len(), 2);
    for (bad, says) in [
        ("nothing", "no '='"),
        ("1K=v@h.example", "not an environment variable name"),
        ("K=value", "no '@HOST'"),
        ("K=@h.example", "empty"),
        ("K=v@", "allowed for no host"),
        ("K=v@not a host", "bad host pattern"),
    ] {
        let e = bad.parse::<SecretSpec>().unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
        assert!(!e.contains("value@"), "{e}");
    }
    let e = "K=topsecretvalue".parse::<SecretSpec>().unwrap_err();
    assert!(!e.contains("topsecretvalue"), "the value leaked into: {e}");
    assert_eq!(
        "terminate".parse::<ViolationMode>(),
        Ok(ViolationMode::Terminate)
    );
    assert!("x"
        .parse::<ViolationMode>()
        .unwrap_err()
        .contains("block-and-log"));
}

#[test]
fn values_come_from_files_and_host_variables() {
    let dir = std::env::temp_dir().join(format!("rf-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, "from-file\n").unwrap();
    let spec = SecretSpec::parse_with(
        &format!("K={}@h.example", file.display()),
        "--secret-file",
        |p| SecretSource::File(p.into()),
    )
    .unwrap();
    let secret = spec.resolve().unwrap();
    assert_eq!(secret.value, b"from-file");
    let missing = SecretSpec {
        env: "K".into(),
        source: SecretSource::HostEnv("RF_SURELY_UNSET_VARIABLE".into()),
        hosts: spec.hosts.clone(),
    };
    assert!(missing
        .resolve()
        .unwrap_err()
        .to_string()
        .contains("RF_SURELY_UNSET_VARIABLE"));
    let _ = std::fs::remove_dir_all(&dir);
}
