//! Domain names as rules and queries see them: lower-case ASCII, no trailing dot, 1..=63-byte
//! labels of letters, digits, `-` and `_`, at most 253 bytes. Owns validation and the
//! allocation-free normalisation of query names; it never resolves anything.

use std::fmt;

/// Longest name (without the trailing dot) accepted, RFC 1035 §2.3.4.
pub const MAX_NAME_LEN: usize = 253;
/// Longest label accepted, RFC 1035 §2.3.4.
pub const MAX_LABEL_LEN: usize = 63;

/// A validated, normalised domain name (e.g. `api.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

/// Why a name is not a valid domain name (the caller wraps this into a `PolicyError`).
pub(crate) fn validate(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("the name is longer than 253 bytes");
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err("the name has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label is longer than 63 bytes");
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("labels may hold only letters, digits, '-' and '_'");
        }
    }
    Ok(())
}

/// Strips one trailing dot from a query name and checks it is a valid domain name in any
/// letter case (the rules of [`DomainName`]). Returns the name without the dot. Never
/// allocates; both evaluators use this, so they agree on what a malformed name matches
/// (nothing).
#[inline]
pub fn query_name_bytes(query: &str) -> Option<&[u8]> {
    let bytes = query.as_bytes();
    let bytes = bytes.strip_suffix(b".").unwrap_or(bytes);
    if bytes.len() > MAX_NAME_LEN {
        return None;
    }
    let mut label_len = 0usize;
    for &b in bytes {
        if b == b'.' {
            if label_len == 0 {
                return None;
            }
            label_len = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label_len += 1;
            if label_len > MAX_LABEL_LEN {
                return None;
            }
        } else {
            return None;
        }
    }
    (label_len > 0).then_some(bytes)
}

/// Copies `query` into `buf` lower-cased and without one trailing dot, and returns the
/// normalised bytes, or `None` when the result is not a valid domain name (see
/// [`query_name_bytes`]). Never allocates.
pub fn normalize_into<'b>(query: &str, buf: &'b mut [u8; MAX_NAME_LEN + 1]) -> Option<&'b [u8]> {
    let bytes = query_name_bytes(query)?;
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out.make_ascii_lowercase();
    Some(out)
}

impl DomainName {
    /// Parses and normalises a name (case folded, one trailing dot removed). The error says
    /// what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let trimmed = text.strip_suffix('.').unwrap_or(text);
        let lower = trimmed.to_ascii_lowercase();
        validate(lower.as_bytes())?;
        let last = lower.rsplit('.').next().unwrap_or("");
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the last label is numeric, so this is neither an IP address nor a domain");
        }
        Ok(Self(lower))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the name has a single label (`intranet`), which rules reject as ambiguous with
    /// group names.
    pub fn is_single_label(&self) -> bool {
        !self.0.contains('.')
    }

    /// True when `name` (normalised) equals this name or is a subdomain of it.
    pub fn is_suffix_of(&self, name: &[u8]) -> bool {
        let me = self.0.as_bytes();
        if name == me {
            return true;
        }
        name.len() > me.len() && name.ends_with(me) && name[name.len() - me.len() - 1] == b'.'
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalises_and_rejects() {
        assert_eq!(
            DomainName::parse("API.Example.COM.").unwrap().as_str(),
            "api.example.com"
        );
        assert!(DomainName::parse("a..b").is_err());
        assert!(DomainName::parse("1.2.3").is_err());
        assert!(DomainName::parse("exa mple.com").is_err());
        assert!(DomainName::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn suffix_matches_apex_and_subdomains_only() {
        let s = DomainName::parse("example.com").unwrap();
        assert!(s.is_suffix_of(b"example.com"));
        assert!(s.is_suffix_of(b"a.b.example.com"));
        assert!(!s.is_suffix_of(b"badexample.com"));
        assert!(!s.is_suffix_of(b"com"));
    }

    #[test]
    fn normalize_into_folds_case_and_dot() {
        let mut buf = [0u8; MAX_NAME_LEN + 1];
        assert_eq!(
            normalize_into("WWW.X.org.", &mut buf),
            Some(&b"www.x.org"[..])
        );
        assert_eq!(normalize_into("a..org", &mut buf), None);
        assert_eq!(normalize_into("", &mut buf), None);
        assert_eq!(normalize_into(&"a.".repeat(200), &mut buf), None);
    }
}

#[cfg(test)]
mod agreement {
    use super::*;

    #[test]
    fn fast_normalisation_agrees_with_validate() {
        let mut buf = [0u8; MAX_NAME_LEN + 1];
        for name in [
            "a",
            "a.b",
            "A.B.",
            "a..b",
            ".a",
            "a.",
            "a.b..",
            "-.x",
            "_x.y",
            "a b.c",
            "é.com",
            &"a".repeat(63),
            &"a".repeat(64),
            &format!("{}.com", "b".repeat(63)),
        ] {
            let slow = {
                let t = name.strip_suffix('.').unwrap_or(name);
                t.len() <= MAX_NAME_LEN && validate(t.to_ascii_lowercase().as_bytes()).is_ok()
            };
            assert_eq!(normalize_into(name, &mut buf).is_some(), slow, "{name:?}");
        }
    }
}
