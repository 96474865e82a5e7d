//! CLI rule text (`--net-rule`, `allow@public:tcp:443,deny@metadata`): the parser, the
//! printed form (it must parse back to the same rules), and compilation, with the compiled
//! evaluator checked against the linear reference on flows and DNS names derived from the
//! rules themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::parse_rules;
use ringfence_fuzz::policy_check::check_policy_rules;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = parse_rules(text) else {
        return;
    };
    let printed: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    let again = parse_rules(&printed.join(",")).expect("printed rules parse back");
    assert_eq!(
        again, rules,
        "printed form {printed:?} parses to different rules"
    );
    check_policy_rules(&rules, data);
});
