//! Inputs found by the fuzz targets in `fuzz/` (`cargo xtask fuzz`), kept as regression tests.
//! The same files are in the fuzz corpora.

use policy::{parse_rules, Destination, Policy};

/// `policy_json`: a host list entry mutated into a single-label name (`localhosm`) became a
/// rule whose printed form (`deny@egress:localhosm`) the rule syntax rejects, so
/// `Policy::to_json` wrote a document `Policy::from_json` could not read back.
#[test]
fn single_label_host_round_trips_through_json() {
    let text = include_str!("data/fuzz-json-single-label-host.json");
    let p = Policy::from_json(text).unwrap();
    assert!(p
        .rules
        .iter()
        .any(|r| r.destination().to_string() == "localhosm."));
    assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p);
    assert_eq!(Policy::from_toml(&p.to_toml().unwrap()).unwrap(), p);
}

/// `policy_toml`: the same with a single-label `deny_domains` entry (`tracle`).
#[test]
fn single_label_deny_domain_round_trips_through_toml() {
    let text = include_str!("data/fuzz-toml-single-label-deny-domain.toml");
    let p = Policy::from_toml(text).unwrap();
    assert_eq!(Policy::from_toml(&p.to_toml().unwrap()).unwrap(), p);
    assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p);
}

/// The rule syntax takes a fully qualified single label as a domain, and still refuses a bare
/// one (it could be a mistyped group).
#[test]
fn single_label_domains_need_the_trailing_dot() {
    let rules = parse_rules("deny@intranet.,allow@public.").unwrap();
    assert!(matches!(rules[0].destination(), Destination::Domain(d) if d.as_str() == "intranet"));
    assert!(matches!(rules[1].destination(), Destination::Domain(d) if d.as_str() == "public"));
    assert_eq!(rules[0].to_string(), "deny@egress:intranet.");
    assert_eq!(
        parse_rules(&rules[1].to_string()).unwrap(),
        vec![rules[1].clone()]
    );
    let e = parse_rules("deny@intranet").unwrap_err().to_string();
    assert!(e.contains("needs at least one dot"), "{e}");
}
