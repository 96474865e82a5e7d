//! The kernel command line as `key=value` tokens separated by spaces.
//!
//! Unknown keys are ignored; a key given twice takes its last value. Values
//! cannot contain spaces (the probe's keys never need them).

/// A borrowed view of the command line.
#[derive(Clone, Copy)]
pub struct Cmdline<'a> {
    text: &'a str,
}

impl<'a> Cmdline<'a> {
    /// Wraps a command line.
    pub fn new(text: &'a str) -> Self {
        Cmdline { text }
    }

    /// The last value given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.text
            .split_ascii_whitespace()
            .filter_map(|tok| tok.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .next_back()
    }

    /// Every value given for `key`, in order.
    pub fn all(&self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.text
            .split_ascii_whitespace()
            .filter_map(|tok| tok.split_once('='))
            .filter(move |(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Parses a decimal or `0x` hexadecimal unsigned integer.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses a byte count with an optional K/M/G suffix (powers of 2^10).
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_u64(digits)?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_value_wins_and_unknown_tokens_are_ignored() {
        let c = Cmdline::new("console=ttyS0 probe.scenario=hello  noflag probe.scenario=spin:5 ");
        assert_eq!(c.get("probe.scenario"), Some("spin:5"));
        assert_eq!(c.get("console"), Some("ttyS0"));
        assert_eq!(c.get("noflag"), None);
        assert_eq!(c.get("probe.peer"), None);
        let all: Vec<&str> = c.all("probe.scenario").collect();
        assert_eq!(all, ["hello", "spin:5"]);
    }

    #[test]
    fn values_may_contain_equals_and_colons() {
        let c = Cmdline::new("virtio_mmio.device=4K@0xd0000000:5 a=b=c");
        assert_eq!(c.get("virtio_mmio.device"), Some("4K@0xd0000000:5"));
        assert_eq!(c.get("a"), Some("b=c"));
    }

    #[test]
    fn numbers_and_sizes() {
        assert_eq!(parse_u64("42"), Some(42));
        assert_eq!(parse_u64("0xd0000000"), Some(0xd000_0000));
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_size("1K"), Some(1024));
        assert_eq!(parse_size("3m"), Some(3 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("G"), None);
        assert_eq!(
            parse_size("99999999999999G"),
            None,
            "overflow must not wrap"
        );
    }
}
