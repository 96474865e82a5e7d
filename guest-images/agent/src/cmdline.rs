//! Parsing the kernel command line (`/proc/cmdline`) into what the agent should do.
//!
//! Words are split like the kernel does (whitespace, with `"..."` quoting); only the
//! `ringfence.*` parameters of [`crate::protocol`] are read, the last occurrence winning.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::protocol::{self, DecodeError};

/// How eth0 is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetConfig {
    /// Leave networking alone (loopback only).
    None,
    /// Run a DHCP client on eth0.
    Dhcp,
    /// A fixed IPv4 address.
    Static {
        /// Interface address.
        addr: Ipv4Addr,
        /// Prefix length (0-32).
        prefix: u8,
        /// Default gateway.
        gateway: Option<Ipv4Addr>,
    },
}

/// Everything the agent takes from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// The command; `None` runs an interactive shell.
    pub argv: Option<Vec<Vec<u8>>>,
    /// Extra environment, `(key, value)`.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory.
    pub cwd: Vec<u8>,
    /// Network setup.
    pub net: NetConfig,
    /// Name servers for `/etc/resolv.conf`.
    pub dns: Vec<IpAddr>,
}

/// A parameter the agent cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// A list could not be decoded.
    Decode {
        /// The parameter.
        param: &'static str,
        /// Why.
        error: DecodeError,
    },
    /// A value has the wrong shape.
    Invalid {
        /// The parameter.
        param: &'static str,
        /// The value as written.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::Decode { param, error } => write!(f, "{param}: {error}"),
            CmdlineError::Invalid {
                param,
                value,
                expected,
            } => write!(f, "{param}={value:?} is not valid: expected {expected}"),
        }
    }
}

impl std::error::Error for CmdlineError {}

/// Splits a kernel command line into words, honouring double quotes.
pub fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn invalid(param: &'static str, value: &str, expected: &'static str) -> CmdlineError {
    CmdlineError::Invalid {
        param,
        value: value.to_string(),
        expected,
    }
}

fn decode(param: &'static str) -> impl Fn(DecodeError) -> CmdlineError {
    move |error| CmdlineError::Decode { param, error }
}

/// Parses `A.B.C.D/N`.
fn parse_cidr(value: &str) -> Result<(Ipv4Addr, u8), CmdlineError> {
    let err = || {
        invalid(
            protocol::IP,
            value,
            "an IPv4 address with prefix, like 10.0.2.15/24",
        )
    };
    let (a, p) = value.split_once('/').ok_or_else(err)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
    let prefix: u8 = p.parse().map_err(|_| err())?;
    if prefix > 32 {
        return Err(err());
    }
    Ok((addr, prefix))
}

/// Parses the agent's parameters out of `cmdline`. `has_eth0` decides the default network
/// mode when none is given.
pub fn parse(cmdline: &str, has_eth0: bool) -> Result<AgentConfig, CmdlineError> {
    let mut values: Vec<(&'static str, String)> = Vec::new();
    for word in split_words(cmdline) {
        if let Some((k, v)) = word.split_once('=') {
            for name in [
                protocol::CMD,
                protocol::ENV,
                protocol::CWD,
                protocol::NET,
                protocol::IP,
                protocol::GW,
                protocol::DNS,
            ] {
                if k == name {
                    values.retain(|(n, _)| *n != name);
                    values.push((name, v.to_string()));
                }
            }
        }
    }
    let get = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };

    let argv = get(protocol::CMD)
        .map(protocol::decode_cmd)
        .transpose()
        .map_err(decode(protocol::CMD))?;
    let mut env = Vec::new();
    for item in
        protocol::decode_list(get(protocol::ENV).unwrap_or("")).map_err(decode(protocol::ENV))?
    {
        let eq = item.iter().position(|&b| b == b'=').filter(|&i| i > 0);
        let Some(eq) = eq else {
            return Err(invalid(
                protocol::ENV,
                &String::from_utf8_lossy(&item),
                "KEY=VALUE items",
            ));
        };
        env.push((item[..eq].to_vec(), item[eq + 1..].to_vec()));
    }
    let cwd = match get(protocol::CWD) {
        Some(v) => protocol::decode_item(v).map_err(decode(protocol::CWD))?,
        None => b"/".to_vec(),
    };
    let dns = protocol::decode_list(get(protocol::DNS).unwrap_or(""))
        .map_err(decode(protocol::DNS))?
        .iter()
        .map(|d| {
            let s = String::from_utf8_lossy(d);
            s.parse::<IpAddr>()
                .map_err(|_| invalid(protocol::DNS, &s, "IP addresses separated by ','"))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let ip = get(protocol::IP).map(parse_cidr).transpose()?;
    let gateway = get(protocol::GW)
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| invalid(protocol::GW, g, "an IPv4 address"))
        })
        .transpose()?;
    let net = match (get(protocol::NET), ip) {
        (Some("none"), _) => NetConfig::None,
        (Some("dhcp"), _) => NetConfig::Dhcp,
        (Some("static") | None, Some((addr, prefix))) => NetConfig::Static {
            addr,
            prefix,
            gateway,
        },
        (Some("static"), None) => {
            return Err(invalid(
                protocol::NET,
                "static",
                "ringfence.ip=A.B.C.D/N alongside ringfence.net=static",
            ))
        }
        (None, None) if has_eth0 => NetConfig::Dhcp,
        (None, None) => NetConfig::None,
        (Some(other), _) => return Err(invalid(protocol::NET, other, "dhcp, static or none")),
    };
    Ok(AgentConfig {
        argv,
        env,
        cwd,
        net,
        dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_the_kernel() {
        assert_eq!(
            split_words("  console=ttyS0 a=\"b c\"  d "),
            vec!["console=ttyS0", "a=b c", "d"]
        );
    }

    #[test]
    fn full_configuration_parses() {
        let c = parse(
            "console=ttyS0 ringfence.cmd=sh,-c,echo%20hi ringfence.env=A=1,B=x%3Dy \
             ringfence.cwd=/tmp ringfence.ip=10.0.2.15/24 ringfence.gw=10.0.2.2 \
             ringfence.dns=10.0.2.3,2001:db8::1",
            true,
        )
        .unwrap();
        assert_eq!(
            c.argv.unwrap(),
            vec![b"sh".to_vec(), b"-c".to_vec(), b"echo hi".to_vec()]
        );
        assert_eq!(
            c.env,
            vec![
                (b"A".to_vec(), b"1".to_vec()),
                (b"B".to_vec(), b"x=y".to_vec())
            ]
        );
        assert_eq!(c.cwd, b"/tmp");
        assert_eq!(
            c.net,
            NetConfig::Static {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            }
        );
        assert_eq!(c.dns.len(), 2);
    }

    #[test]
    fn defaults_depend_on_eth0() {
        let c = parse("console=ttyS0", true).unwrap();
        assert_eq!(
            (c.argv, c.net, c.cwd),
            (None, NetConfig::Dhcp, b"/".to_vec())
        );
        assert_eq!(parse("", false).unwrap().net, NetConfig::None);
        assert_eq!(
            parse("ringfence.net=none ringfence.ip=1.2.3.4/8", true)
                .unwrap()
                .net,
            NetConfig::None
        );
    }

    #[test]
    fn the_last_occurrence_wins() {
        let c = parse("ringfence.cmd=a ringfence.cmd=b", false).unwrap();
        assert_eq!(c.argv.unwrap(), vec![b"b".to_vec()]);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (line, param) in [
            ("ringfence.ip=10.0.2.15", "ringfence.ip"),
            ("ringfence.ip=10.0.2.15/33", "ringfence.ip"),
            ("ringfence.gw=nope", "ringfence.gw"),
            ("ringfence.net=static", "ringfence.net"),
            ("ringfence.net=magic", "ringfence.net"),
            ("ringfence.env=NOEQUALS", "ringfence.env"),
            ("ringfence.cmd=%4", "ringfence.cmd"),
            ("ringfence.dns=1.2.3", "ringfence.dns"),
        ] {
            let err = parse(line, true).unwrap_err().to_string();
            assert!(err.starts_with(param), "{line}: {err}");
        }
    }
}
