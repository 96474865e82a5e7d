//! Guest request bytes through the secrets rewriter of the TLS proxy
//! (`tlsproxy/src/secrets.rs`): what decides whether a placeholder becomes a secret's value,
//! is cut as a violation, or passes. Byte 0xFF in the input stands for the placeholder (a
//! fuzzer cannot guess the random one); the first two bytes pick the host and the split.
//!
//! Properties: rewriting in two pieces at any split gives exactly what rewriting the whole
//! gives (output or violation); for the allowed host every placeholder becomes the value and
//! nothing else changes; for any other host a placeholder is always a violation and its
//! absence never is; the value appears in the output only where a placeholder was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsproxy::{Rewrite, SecretSet, SecretSpec, StreamRewriter};

const VALUE: &[u8] = b"VALUE";

fuzz_target!(|data: &[u8]| {
    let [host_pick, split, rest @ ..] = data else {
        return;
    };
    let spec: SecretSpec = "K=VALUE@api.example.test".parse().expect("spec");
    let set = SecretSet::new(vec![spec.resolve().expect("secret")]);
    let ph = set.iter().next().expect("one").placeholder().as_bytes().to_vec();
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for &b in rest {
        if b == 0xff {
            input.extend_from_slice(&ph);
            expected.extend_from_slice(VALUE);
        } else {
            input.push(b);
            expected.push(b);
        }
    }
    let has_placeholder = rest.contains(&0xff);
    let host = if host_pick % 2 == 0 { "api.example.test" } else { "other.example.test" };
    let whole = set.rewrite(&input, host, true);
    match (&whole, host_pick % 2 == 0, has_placeholder) {
        (Rewrite::Unchanged, _, false) => {}
        (Rewrite::Changed(out, n), true, true) => {
            assert_eq!(out, &expected);
            assert_eq!(*n, rest.iter().filter(|&&b| b == 0xff).count());
        }
        (Rewrite::Violation(_), false, true) => {}
        other => panic!("unexpected {other:?}"),
    }
    // Streaming in two pieces agrees with the whole.
    let cut = usize::from(*split) * input.len() / 256;
    let mut w = StreamRewriter::default();
    let streamed = w
        .feed(&set, &input[..cut], host, true)
        .and_then(|mut a| {
            a.extend(w.feed(&set, &input[cut..], host, true)?);
            a.extend(w.finish(&set, host, true)?);
            Ok(a)
        });
    match (whole, streamed) {
        (Rewrite::Unchanged, Ok(out)) => assert_eq!(out, input),
        (Rewrite::Changed(out, _), Ok(s)) => assert_eq!(out, s),
        (Rewrite::Violation(a), Err(b)) => assert_eq!(a, b),
        (w, s) => panic!("whole {w:?} but streamed {s:?}"),
    }
});
