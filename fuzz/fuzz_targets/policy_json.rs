//! A policy document in JSON (the `--net-policy FILE.json` and API form): parsed, printed
//! back (must parse to the same policy), compiled, and the compiled evaluator checked
//! against the linear reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::Policy;
use ringfence_fuzz::policy_check::check_policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_json(text) else {
        return;
    };
    let printed = policy.to_json();
    let again = Policy::from_json(&printed).expect("printed JSON parses back");
    assert_eq!(
        again, policy,
        "JSON round trip changed the policy: {printed}"
    );
    check_policy(&policy, data);
});
