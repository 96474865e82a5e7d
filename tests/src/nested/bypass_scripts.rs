//! The nested bypass-matrix scenario (issue 19 item 3): the destinations a `public-only`
//! Linux guest must not reach, the guest script that tries each, and the outer script that
//! runs it under `public-only` and then `allow-all` (the live-server check).

/// The bypass matrix (issue 19 item 3): each destination a `public-only` guest must not reach,
/// as curl spells it, with whether a server answers it once the policy allows everything
/// (the outer VM holds every address that can be held). Not live: the IPv4-compatible form
/// (no route for it anywhere), and `0.0.0.0`, `127.0.0.2`, `::`, which the guest's own
/// kernel keeps local, so they never reach the netstack (its handling of them is the policy's
/// `loopback` group, tested in policy/src/groups.rs). The gateway's link-local address with a
/// zone is the host alias.
pub const BYPASS_CASES: &[(&str, &str, bool)] = &[
    ("metadata", "http://169.254.169.254:8080/", true),
    ("metadata, decimal", "http://2852039166:8080/", true),
    ("metadata, octal", "http://0251.0376.0251.0376:8080/", true),
    ("metadata, hex", "http://0xa9fea9fe:8080/", true),
    ("metadata, mixed", "http://169.254.43518:8080/", true),
    (
        "IPv4-mapped IPv6",
        "http://[::ffff:169.254.169.254]:8080/",
        true,
    ),
    (
        "IPv4-compatible IPv6",
        "http://[::169.254.169.254]:8080/",
        false,
    ),
    (
        "NAT64 64:ff9b::/96",
        "http://[64:ff9b::a9fe:a9fe]:8080/",
        true,
    ),
    ("6to4 2002::/16", "http://[2002:a9fe:a9fe::1]:8080/", true),
    (
        "Teredo 2001::/32",
        "http://[2001:0:a9fe:a9fe::5601:5601]:8080/",
        true,
    ),
    ("0.0.0.0", "http://0.0.0.0:8080/", false),
    ("127.0.0.2", "http://127.0.0.2:8080/", false),
    ("::", "http://[::]:8080/", false),
    (
        "link-local with a zone",
        "http://[fe80::1%25eth0]:8080/",
        true,
    ),
    ("private 10.1.2.3", "http://10.1.2.3:8080/", true),
    ("the gateway's other port", "http://172.16.0.1:8080/", true),
    ("host alias", "http://host.ringfence.internal:8080/", true),
    ("DNS into private space", "http://private.test:8080/", true),
];

/// The guest side of the matrix: every case, then UDP to the gateway's echo port. It first
/// waits (at most 10 s) for SLAAC: without a global IPv6 address the IPv6 cases would fail in
/// the guest, not at the policy.
pub fn bypass_script() -> String {
    let mut s = String::from(
        "i=0; while [ $i -lt 50 ] && ! ip -6 -o addr show dev eth0 scope global | grep -q inet6; do sleep 0.2; i=$((i+1)); done\n",
    );
    for (_, url, _) in BYPASS_CASES {
        s.push_str(&format!(
            "out=$(curl -s -g -m 8 '{url}' 2>&1); echo \"CHECK bypass {url} status=$? $out\"\n"
        ));
    }
    s.push_str("out=$(echo udp-bypass | socat -T 3 - UDP:172.16.0.1:7 2>&1); echo \"CHECK bypass udp://172.16.0.1:7 status=$? $out\"\n");
    s
}

/// The matrix under the default policy, then with everything allowed (the live-server check).
pub const BYPASS_OUTER: &str = "for p in public-only allow-all; do
ringfence run --linux --mem 256 --timeout 150 --initrd \"$RF_INITRD\" --net-preset $p -- sh /t/bypass.sh > \"$RF_DIR/$p.out\" 2> \"$RF_DIR/$p.err\"
echo \"CHECK status_$p $?\"
tr -d '\\r' < \"$RF_DIR/$p.out\" | sed -n \"s/^CHECK bypass /CHECK $p /p\"
sed \"s/^/$p: /\" \"$RF_DIR/$p.err\" >&2
done
";
