//! Host patterns as `bypass` lists and secrets name them: `name` (that name only) or
//! `*.suffix` / `.suffix` (the suffix and every name below it), matched the way the policy
//! matches domains (case folded, one trailing dot ignored).

use policy::DomainName;

/// One host pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name.
    Exact(DomainName),
    /// This name and every subdomain.
    Suffix(DomainName),
}

impl HostPattern {
    /// Parses `name`, `*.suffix` or `.suffix`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (suffix, name) = match text.strip_prefix("*.").or_else(|| text.strip_prefix('.')) {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let d = DomainName::parse(name)
            .map_err(|why| format!("bad host pattern {text:?}: {why}; expected a name like api.example.com or *.example.com"))?;
        Ok(if suffix {
            HostPattern::Suffix(d)
        } else {
            HostPattern::Exact(d)
        })
    }

    /// Whether `host` (any case, trailing dot allowed) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        match self {
            HostPattern::Exact(d) => d.as_str() == host,
            HostPattern::Suffix(d) => d.is_suffix_of(host.as_bytes()),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(d) => write!(f, "{d}"),
            HostPattern::Suffix(d) => write!(f, "*.{d}"),
        }
    }
}

/// Whether any of `patterns` matches `host`.
pub fn any_matches(patterns: &[HostPattern], host: &str) -> bool {
    patterns.iter().any(|p| p.matches(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_suffix_patterns_match_as_the_policy_does() {
        let exact = HostPattern::parse("API.example.com.").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("Api.Example.Com."));
        assert!(!exact.matches("x.api.example.com"));
        let suffix = HostPattern::parse("*.example.com").unwrap();
        assert!(suffix.matches("example.com"));
        assert!(suffix.matches("a.b.example.com"));
        assert!(!suffix.matches("badexample.com"));
        assert_eq!(suffix.to_string(), "*.example.com");
    }

    #[test]
    fn bad_patterns_say_what_to_write() {
        for bad in ["", "*.", "a..b", "1.2.3.4", "exa mple.com"] {
            let e = HostPattern::parse(bad).unwrap_err();
            assert!(e.contains("expected a name"), "{bad}: {e}");
        }
    }
}
