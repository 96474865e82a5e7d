//! Unit tests of the ClientHello parser: hand-built hellos (fragmented, oversized, truncated,
//! without or with several names, garbage), real ones from rustls, and random input.

use super::*;
use crate::testkit::rustls_client_hello;
use proptest::prelude::*;

fn ext(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut v = ty.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// server_name extension data listing `names` as (name_type, bytes).
fn sni_data(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, n) in names {
        list.push(*ty);
        list.extend_from_slice(&(n.len() as u16).to_be_bytes());
        list.extend_from_slice(n);
    }
    let mut v = (list.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(&list);
    v
}

fn sni(name: &str) -> Vec<u8> {
    ext(0, &sni_data(&[(0, name.as_bytes())]))
}

/// A ClientHello handshake message (header included) with `exts` as its extensions block
/// (`None`: no block at all).
fn hello_msg(exts: Option<&[u8]>) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend_from_slice(&[7u8; 32]);
    b.push(32);
    b.extend_from_slice(&[9u8; 32]);
    b.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
    b.extend_from_slice(&[1, 0]);
    if let Some(e) = exts {
        b.extend_from_slice(&(e.len() as u16).to_be_bytes());
        b.extend_from_slice(e);
    }
    let mut m = vec![1];
    m.extend_from_slice(&(b.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(&b);
    m
}

/// `msg` in handshake records of at most `frag` bytes each.
fn records(msg: &[u8], frag: usize) -> Vec<u8> {
    crate::testkit::tls_records(msg, frag)
}

fn with_exts(exts: &[Vec<u8>]) -> Vec<u8> {
    records(&hello_msg(Some(&exts.concat())), 16384)
}

fn name_of(stream: &[u8]) -> Result<Option<String>, HelloError> {
    parse_client_hello(stream).map(|h| h.server_name)
}

#[test]
fn reads_the_host_name_among_other_extensions() {
    let s = with_exts(&[
        ext(10, &[0, 2, 0, 29]),
        sni("api.example.com"),
        ext(43, &[2, 3, 4]),
    ]);
    let h = parse_client_hello(&s).unwrap();
    assert_eq!(h.server_name.as_deref(), Some("api.example.com"));
    assert_eq!(h.len, s.len());
}

#[test]
fn names_are_normalised_like_policy_names() {
    let s = with_exts(&[sni("API.Example.COM.")]);
    assert_eq!(name_of(&s).unwrap().as_deref(), Some("api.example.com"));
}

#[test]
fn a_hello_spread_over_many_records_is_reassembled() {
    let msg = hello_msg(Some(&sni("split.example")));
    for frag in [1, 2, 3, 7, 50] {
        let s = records(&msg, frag);
        let h = parse_client_hello(&s).unwrap();
        assert_eq!(
            h.server_name.as_deref(),
            Some("split.example"),
            "frag {frag}"
        );
        assert_eq!(h.len, s.len());
    }
}

#[test]
fn every_prefix_asks_for_more_without_overshooting() {
    let msg = hello_msg(Some(&sni("prefix.example")));
    for frag in [1, 5, 16384] {
        let s = records(&msg, frag);
        for cut in 1..s.len() {
            match parse_client_hello(&s[..cut]) {
                Err(HelloError::Incomplete { need }) => {
                    assert!(
                        need > cut && need <= s.len(),
                        "frag {frag} cut {cut} need {need}"
                    )
                }
                other => panic!("frag {frag} cut {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn data_after_the_hello_records_is_not_part_of_it() {
    let mut s = with_exts(&[sni("early.example")]);
    let hello_len = s.len();
    s.extend_from_slice(&[23, 3, 3, 0, 2, 0xaa, 0xbb]);
    let h = parse_client_hello(&s).unwrap();
    assert_eq!(
        (h.server_name.as_deref(), h.len),
        (Some("early.example"), hello_len)
    );
}

#[test]
fn no_server_name_is_not_an_error() {
    assert_eq!(name_of(&with_exts(&[ext(10, &[0, 2, 0, 29])])), Ok(None));
    assert_eq!(name_of(&records(&hello_msg(None), 100)), Ok(None));
    assert_eq!(name_of(&with_exts(&[])), Ok(None));
}

#[test]
fn ambiguous_names_are_malformed() {
    let two_names = ext(0, &sni_data(&[(0, b"a.example"), (0, b"b.example")]));
    let other_type = ext(0, &sni_data(&[(1, b"a.example")]));
    let empty_list = ext(0, &[0, 0]);
    let empty_ext = ext(0, &[]);
    let empty_name = ext(0, &sni_data(&[(0, b"")]));
    for (what, exts) in [
        ("two host names", vec![two_names]),
        ("two extensions", vec![sni("a.example"), sni("b.example")]),
        ("other name type", vec![other_type]),
        ("empty list", vec![empty_list]),
        ("empty extension", vec![empty_ext]),
        ("empty name", vec![empty_name]),
        ("space", vec![sni("a b.example")]),
        ("nul", vec![sni("evil.test\0.good.example")]),
        ("empty label", vec![sni("a..example")]),
        ("not utf-8", vec![ext(0, &sni_data(&[(0, &[0xff, 0xfe])]))]),
    ] {
        assert!(
            matches!(name_of(&with_exts(&exts)), Err(HelloError::Malformed(_))),
            "{what}"
        );
    }
}

#[test]
fn oversized_hellos_are_refused_as_soon_as_their_length_is_known() {
    // A padding extension pushes the hello past 16 KiB.
    let msg = hello_msg(Some(
        &[sni("big.example"), ext(21, &vec![0u8; 20_000])].concat(),
    ));
    let s = records(&msg, 1000);
    assert_eq!(parse_client_hello(&s[..1005]), Err(HelloError::TooLarge));
    assert_eq!(parse_client_hello(&s), Err(HelloError::TooLarge));
    // One record announcing 2^14 bytes cannot fit with its header either.
    let mut one = vec![22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfc];
    one.extend_from_slice(&[0u8; 100]);
    assert_eq!(parse_client_hello(&one), Err(HelloError::TooLarge));
    // Just under the bound is fine.
    let pad = MAX_CLIENT_HELLO
        - hello_msg(Some(&[sni("fits.example"), ext(21, &[])].concat())).len()
        - 10;
    let msg = hello_msg(Some(
        &[sni("fits.example"), ext(21, &vec![0u8; pad])].concat(),
    ));
    let s = records(&msg, 16384 - 1);
    assert!(s.len() <= MAX_CLIENT_HELLO, "{}", s.len());
    assert_eq!(name_of(&s).unwrap().as_deref(), Some("fits.example"));
}

#[test]
fn garbage_and_other_protocols_are_refused() {
    for (what, bytes) in [
        ("http", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("ssh", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        ("sslv2", vec![0x80, 0x2e, 0x01, 0x00, 0x02]),
        ("application data first", vec![23, 3, 3, 0, 1, 0]),
        ("bad record version", vec![22, 1, 0]),
    ] {
        assert_eq!(
            parse_client_hello(&bytes),
            Err(HelloError::NotTls),
            "{what}"
        );
    }
    let msg = hello_msg(Some(&sni("x.example")));
    let mut interleaved = records(&msg[..10], 10);
    interleaved.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
    let mut server_hello = records(&msg, 16384);
    server_hello[5] = 2;
    let mut short_session = msg.clone();
    short_session[4 + 2 + 32] = 40;
    let mut odd_suites = msg.clone();
    odd_suites[4 + 2 + 32 + 1 + 32 + 1] = 3;
    let mut trailing = msg.clone();
    trailing.push(0);
    let mut trailing_in_record = msg.clone();
    trailing_in_record.extend_from_slice(&[20, 0, 0, 0]);
    for (what, bytes) in [
        ("alert inside the hello", interleaved),
        ("server hello", server_hello),
        ("empty record", vec![22, 3, 1, 0, 0]),
        ("session id > 32", records(&short_session, 16384)),
        ("odd cipher suites", records(&odd_suites, 16384)),
        ("record over 2^14", vec![22, 3, 1, 0x40, 0x01]),
        ("hello shorter than its body", {
            let mut m = hello_msg(Some(&sni("x.example")));
            m[3] -= 1;
            records(&m, 16384)
        }),
        (
            "another handshake message after the hello",
            records(&trailing_in_record, 16384),
        ),
    ] {
        assert!(
            matches!(parse_client_hello(&bytes), Err(HelloError::Malformed(_))),
            "{what}: {:?}",
            parse_client_hello(&bytes)
        );
    }
    // A body whose stated length covers a stray byte after the extensions.
    let mut m = trailing;
    let body_len = m.len() - 4;
    m[1..4].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    assert!(matches!(
        name_of(&records(&m, 16384)),
        Err(HelloError::Malformed(_))
    ));
}

#[test]
fn only_the_bound_is_looked_at() {
    // 16 KiB of tiny records that never finish the hello: refused, not waited for.
    let msg = hello_msg(Some(
        &[sni("slow.example"), ext(21, &vec![0u8; 3000])].concat(),
    ));
    let s = records(&msg, 1);
    assert!(s.len() > MAX_CLIENT_HELLO);
    assert_eq!(parse_client_hello(&s), Err(HelloError::TooLarge));
    assert_eq!(
        parse_client_hello(&s[..MAX_CLIENT_HELLO]),
        Err(HelloError::TooLarge)
    );
}

#[test]
fn real_client_hellos_from_rustls() {
    let s = rustls_client_hello("Api.Example.com", true);
    let h = parse_client_hello(&s).unwrap();
    assert_eq!(h.server_name.as_deref(), Some("api.example.com"));
    assert_eq!(h.len, s.len());
    assert_eq!(
        name_of(&rustls_client_hello("api.example.com", false)),
        Ok(None)
    );
    // An IP address is never sent as a server name (RFC 6066 §3).
    assert_eq!(name_of(&rustls_client_hello("203.0.113.7", true)), Ok(None));
    for frag in [1, 100] {
        let msg = &s[5..];
        assert_eq!(
            name_of(&records(msg, frag)).unwrap().as_deref(),
            Some("api.example.com")
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_client_hello(&bytes);
        let mut framed = vec![22, 3, 1];
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        let _ = parse_client_hello(&framed);
    }

    #[test]
    fn mutated_hellos_never_panic_and_need_stays_bounded(
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        frag in 1usize..200,
        cut in any::<usize>(),
    ) {
        let mut s = records(&hello_msg(Some(&[sni("m.example"), ext(10, &[0, 2, 0, 29])].concat())), frag);
        for (i, b) in flips {
            let i = i % s.len();
            s[i] = b;
        }
        let s = &s[..cut % (s.len() + 1)];
        if let Err(HelloError::Incomplete { need }) = parse_client_hello(s) {
            prop_assert!(need > s.len() && need <= MAX_CLIENT_HELLO);
        }
    }
}
