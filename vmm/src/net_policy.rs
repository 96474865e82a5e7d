//! The network policy as the VMM applies it: built once from the CLI/library settings
//! (preset, rules, defaults, deny-lists, config file), compiled, held in an `ArcSwap` so that
//! [`PolicyHandle::set_policy`] and [`PolicyHandle::set_network_enabled`] take effect on the
//! next flow without locks, and bound to the netstack as its `FlowGate`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use netstack::{FlowGate, FlowInfo, Verdict};
use policy::{
    parse_destination, parse_rule, Action, CompiledPolicy, Destination, Policy, PolicyContext,
    Preset,
};

/// Policy settings as the user gives them.
#[derive(Clone, Debug, Default)]
pub struct PolicySettings {
    /// Starting point (default `public-only`); ignored when `config_file` is set.
    pub preset: Option<String>,
    /// Rules in `allow@public:tcp:443` syntax, evaluated before the preset's, in order.
    pub rules: Vec<String>,
    /// Overrides the default egress action.
    pub default_egress: Option<String>,
    /// Overrides the default ingress action.
    pub default_ingress: Option<String>,
    /// Domains (`evil.test`) or suffixes (`.evil.test`) denied before every allow rule.
    pub deny_domains: Vec<String>,
    /// A policy document (JSON or TOML by extension) replacing the preset.
    pub config_file: Option<PathBuf>,
    /// A policy replacing the preset, already parsed (the API server's `PUT /network-policy`
    /// before boot); `config_file` wins when both are set.
    pub document: Option<Policy>,
}

/// A policy setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicySetupError {
    /// The policy crate rejected a value.
    #[error("{what}: {source}")]
    Policy {
        /// Which setting.
        what: String,
        /// The parser's explanation.
        #[source]
        source: policy::PolicyError,
    },
    /// A default action other than allow/deny.
    #[error("{flag} must be allow or deny (got {value:?})")]
    BadAction {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// `--net-deny-domain` given something other than a name.
    #[error("--net-deny-domain {value}: not a domain name; give example.com or .example.com")]
    NotADomain {
        /// The value given.
        value: String,
    },
    /// The change-signal eventfd could not be created.
    #[error("cannot create the policy change eventfd: {0}")]
    Eventfd(#[source] std::io::Error),
    /// The config file cannot be read.
    #[error("cannot read --net-config {path}: {reason}")]
    ConfigFile {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn parse_action(flag: &'static str, value: &str) -> Result<Action, PolicySetupError> {
    match value {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        _ => Err(PolicySetupError::BadAction {
            flag,
            value: value.to_string(),
        }),
    }
}

/// Builds the policy the settings describe.
pub fn build_policy(s: &PolicySettings) -> Result<Policy, PolicySetupError> {
    let mut policy = match (&s.config_file, &s.document) {
        (None, Some(doc)) => doc.clone(),
        (config_file, _) => match config_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| PolicySetupError::ConfigFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                let is_toml = path.extension().is_some_and(|e| e == "toml");
                let parsed = if is_toml {
                    Policy::from_toml(&text)
                } else {
                    Policy::from_json(&text)
                };
                parsed.map_err(|source| PolicySetupError::Policy {
                    what: format!("--net-config {}", path.display()),
                    source,
                })?
            }
            None => {
                let name = s.preset.as_deref().unwrap_or("public-only");
                name.parse::<Preset>()
                    .map_err(|source| PolicySetupError::Policy {
                        what: format!("--net-preset {name}"),
                        source,
                    })?
                    .policy()
            }
        },
    };
    let mut user_rules = Vec::with_capacity(s.rules.len());
    for text in &s.rules {
        user_rules.push(parse_rule(text).map_err(|source| PolicySetupError::Policy {
            what: format!("--net-rule {text}"),
            source,
        })?);
    }
    user_rules.append(&mut policy.rules);
    policy.rules = user_rules;
    if let Some(v) = &s.default_egress {
        policy.default_egress = parse_action("--net-default-egress", v)?;
    }
    if let Some(v) = &s.default_ingress {
        policy.default_ingress = parse_action("--net-default-ingress", v)?;
    }
    let (mut domains, mut suffixes) = (Vec::new(), Vec::new());
    for text in &s.deny_domains {
        match parse_destination(text, text) {
            Ok(Destination::Domain(d)) => domains.push(d),
            Ok(Destination::Suffix(d)) => suffixes.push(d),
            Ok(_) => {
                return Err(PolicySetupError::NotADomain {
                    value: text.clone(),
                })
            }
            Err(source) => {
                return Err(PolicySetupError::Policy {
                    what: format!("--net-deny-domain {text}"),
                    source,
                })
            }
        }
    }
    policy.prepend_deny_names(&domains, &suffixes);
    Ok(policy)
}

/// The live policy of one VM, shared by the VMM (writers) and the netstack (reader).
#[derive(Clone)]
pub struct PolicyHandle {
    compiled: Arc<ArcSwap<CompiledPolicy>>,
    enabled: Arc<AtomicBool>,
    policy: Arc<ArcSwap<Policy>>,
    context: Arc<ArcSwap<PolicyContext>>,
    changed: Arc<vmm_sys_util::eventfd::EventFd>,
}

impl PolicyHandle {
    /// Compiles `policy` for a sandbox whose gateway (the `host` group) is `host_addrs`.
    pub fn new(policy: &Policy, host_addrs: Vec<IpAddr>) -> Result<Self, PolicySetupError> {
        let context = PolicyContext { host_addrs };
        let compiled = policy
            .compile(&context)
            .map_err(|source| PolicySetupError::Policy {
                what: "compiling the network policy".into(),
                source,
            })?;
        Ok(PolicyHandle {
            compiled: Arc::new(ArcSwap::from_pointee(compiled)),
            enabled: Arc::new(AtomicBool::new(true)),
            policy: Arc::new(ArcSwap::from_pointee(policy.clone())),
            context: Arc::new(ArcSwap::from_pointee(context)),
            changed: Arc::new(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                    .map_err(PolicySetupError::Eventfd)?,
            ),
        })
    }

    /// The eventfd written on every change (the device thread re-judges live flows on it).
    pub fn change_signal(&self) -> Arc<vmm_sys_util::eventfd::EventFd> {
        self.changed.clone()
    }

    fn signal_change(&self) {
        let _ = self.changed.write(1);
    }

    /// Sets the sandbox's gateway addresses (the `host` group) and recompiles.
    pub fn set_host_addrs(&self, host_addrs: Vec<IpAddr>) -> Result<(), PolicySetupError> {
        self.context.store(Arc::new(PolicyContext { host_addrs }));
        self.set_policy(&self.policy.load())
    }

    /// Replaces the policy: new flows are judged by it at once, and the device thread
    /// re-judges live flows (cutting those it denies).
    pub fn set_policy(&self, policy: &Policy) -> Result<(), PolicySetupError> {
        let compiled =
            policy
                .compile(&self.context.load())
                .map_err(|source| PolicySetupError::Policy {
                    what: "compiling the new network policy".into(),
                    source,
                })?;
        self.compiled.store(Arc::new(compiled));
        self.policy.store(Arc::new(policy.clone()));
        self.signal_change();
        Ok(())
    }

    /// Turns all networking on or off (off denies every new flow and DNS query and cuts the
    /// live ones).
    pub fn set_network_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
        self.signal_change();
    }

    /// Whether networking is enabled.
    pub fn network_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// The gate the netstack asks.
    pub fn gate(&self) -> PolicyGate {
        PolicyGate {
            handle: self.clone(),
        }
    }
}

/// [`FlowGate`] over a [`PolicyHandle`]: one lock-free load and one compiled lookup per flow.
pub struct PolicyGate {
    handle: PolicyHandle,
}

impl FlowGate for PolicyGate {
    fn decide(&self, flow: &FlowInfo<'_>) -> Verdict {
        if !self.handle.network_enabled() {
            return Verdict::DENY;
        }
        let policy = self.handle.compiled.load();
        let v = FlowGate::decide(&**policy, flow);
        if !v.allow {
            let why = v
                .rule
                .and_then(|i| policy.rule(i).map(|r| format!("rule {i}: {r}")))
                .unwrap_or_else(|| "no rule matched; default".to_string());
            eprintln!(
                "ringfence: policy denied {:?} {:?} to {}:{}{} ({why})",
                flow.direction,
                flow.proto,
                flow.dst,
                flow.port,
                flow.domain.map(|d| format!(" ({d})")).unwrap_or_default()
            );
        }
        v
    }

    fn decide_dns(&self, name: &str) -> Verdict {
        if !self.handle.network_enabled() {
            return Verdict::DENY;
        }
        FlowGate::decide_dns(&**self.handle.compiled.load(), name)
    }

    fn decide_server_name(&self, flow: &FlowInfo<'_>, name: Option<&str>) -> Verdict {
        if !self.handle.network_enabled() {
            return Verdict::DENY;
        }
        let policy = self.handle.compiled.load();
        let v = FlowGate::decide_server_name(&**policy, flow, name);
        if !v.allow {
            let why = match (name, v.rule) {
                (None, _) => "no server name and --tls-require-sni".to_string(),
                (Some(_), Some(i)) => policy
                    .rule(i)
                    .map(|r| format!("rule {i}: {r}"))
                    .unwrap_or_else(|| format!("rule {i}")),
                (Some(_), None) => "no rule names it; egress defaults to deny".to_string(),
            };
            eprintln!(
                "ringfence: policy denied {:?} {:?} to {}:{}{} SNI {} ({why})",
                flow.direction,
                flow.proto,
                flow.dst,
                flow.port,
                flow.domain.map(|d| format!(" ({d})")).unwrap_or_default(),
                name.unwrap_or("(none)"),
            );
        }
        v
    }

    fn check_dns_answer(&self, name: &str, addr: IpAddr) -> Verdict {
        FlowGate::check_dns_answer(&**self.handle.compiled.load(), name, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netstack::FlowProto;

    fn flow(dst: &str, port: u16) -> FlowInfo<'static> {
        FlowInfo {
            direction: netstack::Direction::Egress,
            proto: FlowProto::Tcp,
            dst: dst.parse().unwrap(),
            port,
            domain: None,
            to_host: false,
        }
    }

    #[test]
    fn user_rules_come_before_the_preset_and_defaults_override() {
        let s = PolicySettings {
            rules: vec![
                "deny@203.0.113.7".into(),
                "allow@10.0.0.0/8:tcp:8000-9000".into(),
            ],
            ..Default::default()
        };
        let p = build_policy(&s).unwrap();
        let h = PolicyHandle::new(&p, vec!["172.16.0.1".parse().unwrap()]).unwrap();
        let g = h.gate();
        assert!(
            g.decide(&flow("203.0.113.8", 443)).allow,
            "public allowed by the preset"
        );
        assert!(
            !g.decide(&flow("203.0.113.7", 443)).allow,
            "user deny first"
        );
        assert!(g.decide(&flow("10.1.2.3", 8080)).allow);
        assert!(
            !g.decide(&flow("10.1.2.3", 22)).allow,
            "private denied by the preset"
        );
        assert!(
            !g.decide(&flow("169.254.169.254", 80)).allow,
            "metadata denied"
        );
    }

    #[test]
    fn switching_the_network_off_and_swapping_policies_take_effect_at_once() {
        let h = PolicyHandle::new(&Preset::AllowAll.policy(), vec![]).unwrap();
        let g = h.gate();
        assert!(g.decide(&flow("10.0.0.1", 80)).allow);
        h.set_network_enabled(false);
        assert!(!g.decide(&flow("10.0.0.1", 80)).allow);
        h.set_network_enabled(true);
        h.set_policy(&Preset::None.policy()).unwrap();
        assert!(!g.decide(&flow("203.0.113.1", 443)).allow);
    }

    #[test]
    fn server_names_narrow_allowed_addresses() {
        let s = PolicySettings {
            rules: vec!["allow@public:tcp:443".into()],
            deny_domains: vec![".evil.test".into()],
            ..Default::default()
        };
        let h = PolicyHandle::new(&build_policy(&s).unwrap(), vec![]).unwrap();
        let g = h.gate();
        let f = flow("203.0.113.8", 443);
        assert!(g.decide(&f).allow);
        assert!(g.decide_server_name(&f, Some("api.example.com")).allow);
        let v = g.decide_server_name(&f, Some("www.evil.test"));
        assert_eq!((v.allow, v.rule), (false, Some(0)));
        assert!(!g.decide_server_name(&f, None).allow);
        h.set_network_enabled(false);
        assert!(!g.decide_server_name(&f, Some("api.example.com")).allow);
    }

    #[test]
    fn bad_settings_name_the_flag_and_value() {
        let bad = |s: PolicySettings| build_policy(&s).unwrap_err().to_string();
        let e = bad(PolicySettings {
            rules: vec!["allow@*:tcp:9000-80".into()],
            ..Default::default()
        });
        assert!(e.contains("--net-rule allow@*:tcp:9000-80"), "{e}");
        let e = bad(PolicySettings {
            preset: Some("open".into()),
            ..Default::default()
        });
        assert!(e.contains("--net-preset open"), "{e}");
        let e = bad(PolicySettings {
            default_egress: Some("maybe".into()),
            ..Default::default()
        });
        assert!(e.contains("--net-default-egress"), "{e}");
        let e = bad(PolicySettings {
            deny_domains: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        assert!(e.contains("not a domain name"), "{e}");
    }
}
