//! The kernel command-line protocol between ringfence and its guest agent. Dependency-free, so
//! the VMM can build the command line with the same code the agent parses it with.
//!
//! Parameters (all optional; the kernel ignores unknown dotted words and leaves them in
//! `/proc/cmdline`, where the agent reads them):
//!
//! | parameter | value | meaning |
//! |---|---|---|
//! | `ringfence.cmd=` | list | argv of the command to run; absent: an interactive `/bin/sh` |
//! | `ringfence.env=` | list of `KEY=VALUE` | extra environment variables |
//! | `ringfence.cwd=` | one item | working directory (default `/`) |
//! | `ringfence.net=` | `dhcp`, `static` or `none` | how eth0 is set up (default: `static` when `ringfence.ip` is given, else `dhcp` when eth0 exists) |
//! | `ringfence.ip=` | `A.B.C.D/N` | static IPv4 address of eth0 |
//! | `ringfence.gw=` | `A.B.C.D` | default gateway |
//! | `ringfence.dns=` | list of addresses | name servers written to `/etc/resolv.conf` |
//!
//! A *list* is items separated by `,`; each item is percent-encoded (RFC 3986 §2.1): every
//! byte outside `A-Z a-z 0-9 - . _ ~ / : = @ + ^` becomes `%XX`, so spaces, quotes, commas and
//! non-UTF-8 bytes survive the kernel's whitespace splitting. Example:
//! `sh -c 'echo a,b'` → `ringfence.cmd=sh,-c,echo%20a%2Cb`.

use std::fmt;

/// Parameter names.
pub const CMD: &str = "ringfence.cmd";
/// Environment list parameter.
pub const ENV: &str = "ringfence.env";
/// Working directory parameter.
pub const CWD: &str = "ringfence.cwd";
/// Network mode parameter.
pub const NET: &str = "ringfence.net";
/// Static address parameter.
pub const IP: &str = "ringfence.ip";
/// Gateway parameter.
pub const GW: &str = "ringfence.gw";
/// Name server list parameter.
pub const DNS: &str = "ringfence.dns";

/// Bytes kept as they are by [`encode_item`].
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~/:=@+^".contains(&b)
}

/// Percent-encodes one item.
pub fn encode_item(item: &[u8]) -> String {
    let mut out = String::with_capacity(item.len());
    for &b in item {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes a list: items percent-encoded and joined with `,`.
pub fn encode_list<I, T>(items: I) -> String
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    items
        .into_iter()
        .map(|i| encode_item(i.as_ref()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `ringfence.cmd=<argv>` for `argv` (which must not be empty).
pub fn cmd_param<I, T>(argv: I) -> Result<String, DecodeError>
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let list = encode_list(argv);
    if list.is_empty() {
        return Err(DecodeError::EmptyCommand);
    }
    Ok(format!("{CMD}={list}"))
}

/// Why a parameter value could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    BadEscape {
        /// The offending item as written.
        item: String,
    },
    /// `ringfence.cmd` is present but empty, or its program is empty.
    EmptyCommand,
    /// A byte that the encoder never emits (space, quote, control character).
    BadByte {
        /// The byte.
        byte: u8,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadEscape { item } => write!(
                f,
                "bad percent escape in {item:?}: '%' must be followed by two hex digits"
            ),
            DecodeError::EmptyCommand => write!(
                f,
                "{CMD} is empty: give at least the program, e.g. {CMD}=/bin/true"
            ),
            DecodeError::BadByte { byte } => write!(
                f,
                "byte {byte:#04x} cannot appear in an encoded value; percent-encode it"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one percent-encoded item.
pub fn decode_item(item: &str) -> Result<Vec<u8>, DecodeError> {
    let bytes = item.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| DecodeError::BadEscape {
                        item: item.to_string(),
                    })?;
                out.push(hex);
                i += 3;
            }
            b if b <= b' ' || b == b'"' || b == 0x7f => {
                return Err(DecodeError::BadByte { byte: b });
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Decodes a `,`-separated list. An empty value is an empty list.
pub fn decode_list(value: &str) -> Result<Vec<Vec<u8>>, DecodeError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value.split(',').map(decode_item).collect()
}

/// Decodes the value of `ringfence.cmd` into argv.
pub fn decode_cmd(value: &str) -> Result<Vec<Vec<u8>>, DecodeError> {
    let argv = decode_list(value)?;
    match argv.first() {
        Some(prog) if !prog.is_empty() => Ok(argv),
        _ => Err(DecodeError::EmptyCommand),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_round_trips_through_the_kernel_command_line() {
        let argv: Vec<&[u8]> = vec![
            b"sh",
            b"-c",
            b"echo \"a,b\" 100% 'x' \t\n",
            b"",
            b"\xff\x00bin",
            b"--opt=v@h:1/2+3^~",
        ];
        let param = cmd_param(&argv).unwrap();
        assert!(!param.contains(' ') && !param.contains('"'));
        let value = param.strip_prefix("ringfence.cmd=").unwrap();
        assert_eq!(decode_cmd(value).unwrap(), argv);
    }

    #[test]
    fn the_example_in_the_docs_is_right() {
        assert_eq!(
            cmd_param(["sh", "-c", "echo a,b"]).unwrap(),
            "ringfence.cmd=sh,-c,echo%20a%2Cb"
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        assert_eq!(
            decode_item("a%2"),
            Err(DecodeError::BadEscape { item: "a%2".into() })
        );
        assert!(decode_item("%zz").is_err());
        assert_eq!(decode_cmd(""), Err(DecodeError::EmptyCommand));
        assert_eq!(decode_cmd(",x"), Err(DecodeError::EmptyCommand));
        assert_eq!(decode_item("a b"), Err(DecodeError::BadByte { byte: b' ' }));
        assert!(cmd_param(Vec::<&str>::new()).is_err());
        assert!(DecodeError::EmptyCommand
            .to_string()
            .contains("ringfence.cmd"));
    }

    #[test]
    fn lowercase_hex_is_accepted() {
        assert_eq!(decode_item("%2c%2C").unwrap(), b",,");
    }
}
