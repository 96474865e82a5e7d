//! The server name of a TLS ClientHello, read from the first bytes of a guest's stream.
//!
//! What is read (RFC 8446 §5.1 and §4.1.2, RFC 6066 §3; the same layout in TLS 1.0–1.3):
//!
//! ```text
//! record:     type(1)=22 handshake | version(2)=3.x | length(2) <= 2^14 | fragment
//! handshake:  type(1)=1 ClientHello | length(3) | body       (may span several records)
//! body:       version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2>
//!             compression_methods<1..2^8-1> [extensions<0..2^16-1>]
//! extension:  type(2) length(2) data;  server_name (type 0):
//!             list<1..2^16-1> of { name_type(1)=0 host_name | HostName<1..2^16-1> }
//! ```
//!
//! Stricter than a TLS server needs to be, because the answer decides a policy question and
//! a server that reads a name differently must not be handed one we judged otherwise:
//! records of any other type before the ClientHello is complete, a second server_name
//! extension, more than one host name, other name types, names that are not valid host
//! names, and bytes after the ClientHello inside its records are all malformed. A name is
//! returned lower-cased without a trailing dot (the policy's own domain-name rules). With
//! Encrypted Client Hello the name read is the outer, public one.
//!
//! Bounded: at most [`MAX_CLIENT_HELLO`] bytes of the stream are looked at; a ClientHello
//! that needs more is [`HelloError::TooLarge`]. The only allocation is the reassembled
//! handshake message (no larger than that bound) and the returned name. Never panics: every
//! length is checked before it is used.

use policy::DomainName;

/// Most bytes of a guest's stream held and parsed for its ClientHello (records included).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
const RECORD_HEADER: usize = 5;
/// RFC 8446 §5.1: a TLSPlaintext fragment is at most 2^14 bytes.
const MAX_RECORD: usize = 1 << 14;

/// What the ClientHello says that the netstack needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name of the server_name extension (lower case, no trailing dot), if any.
    pub server_name: Option<String>,
    /// Bytes of the stream taken by the records that carry the ClientHello.
    pub len: usize,
}

/// Why no server name could be read (yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The stream ends before the ClientHello does: parse again once at least `need` bytes
    /// of it are at hand (`need` never exceeds [`MAX_CLIENT_HELLO`]).
    #[error("incomplete ClientHello: at least {need} bytes of the stream are needed")]
    Incomplete {
        /// A lower bound of the stream length the ClientHello needs.
        need: usize,
    },
    /// The stream does not start with a TLS handshake record (plain text, SSLv2, another
    /// protocol).
    #[error("the stream does not start with a TLS handshake record")]
    NotTls,
    /// A field or length is inconsistent; the text names it.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello needs more than [`MAX_CLIENT_HELLO`] bytes of the stream.
    #[error("the ClientHello needs more than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
}

/// Reads the ClientHello at the start of `stream` (the first bytes a client sent on a TCP
/// connection) and returns its server name. Only the first [`MAX_CLIENT_HELLO`] bytes are
/// looked at. Safe on any input; meant to be called again with more bytes after
/// [`HelloError::Incomplete`].
pub fn parse_client_hello(stream: &[u8]) -> Result<ClientHello, HelloError> {
    let stream = &stream[..stream.len().min(MAX_CLIENT_HELLO)];
    // Refuse what is plainly not TLS from its first byte or two, without waiting for more.
    match stream {
        [t, ..] if *t != CONTENT_HANDSHAKE => return Err(HelloError::NotTls),
        [_, major, ..] if *major != 3 => return Err(HelloError::NotTls),
        _ => {}
    }
    let (msg, len) = reassemble(stream)?;
    let body = &msg[4..];
    Ok(ClientHello {
        server_name: parse_body(body)?,
        len,
    })
}

/// An `Incomplete` asking for `need` bytes, or `TooLarge` when that is over the bound.
fn incomplete(need: usize) -> HelloError {
    if need > MAX_CLIENT_HELLO {
        HelloError::TooLarge
    } else {
        HelloError::Incomplete { need }
    }
}

/// Concatenates the fragments of the handshake records at the start of `stream` until they
/// hold the whole ClientHello message (header included); returns it and the stream bytes
/// its records took.
fn reassemble(stream: &[u8]) -> Result<(Vec<u8>, usize), HelloError> {
    let mut msg: Vec<u8> = Vec::new();
    // Length of the whole handshake message (4-byte header + body), once its header is in.
    let mut want: Option<usize> = None;
    let mut pos = 0usize;
    loop {
        if let Some(w) = want {
            if msg.len() >= w {
                if msg.len() > w {
                    return Err(HelloError::Malformed(
                        "bytes after the ClientHello in its record",
                    ));
                }
                return Ok((msg, pos));
            }
        }
        let missing = match want {
            Some(w) => w - msg.len(),
            None => 4 - msg.len().min(4),
        };
        let Some(h) = stream.get(pos..pos + RECORD_HEADER) else {
            return Err(incomplete(pos + RECORD_HEADER + missing));
        };
        if h[0] != CONTENT_HANDSHAKE {
            return Err(HelloError::Malformed(
                "a record of another type before the ClientHello is complete",
            ));
        }
        if h[1] != 3 {
            return Err(HelloError::Malformed("record version is not 3.x"));
        }
        let rec_len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if rec_len == 0 {
            // RFC 8446 §5.1: no zero-length handshake fragments.
            return Err(HelloError::Malformed("an empty handshake record"));
        }
        if rec_len > MAX_RECORD {
            return Err(HelloError::Malformed("a record longer than 2^14 bytes"));
        }
        let end = pos + RECORD_HEADER + rec_len;
        let Some(fragment) = stream.get(pos + RECORD_HEADER..end) else {
            return Err(incomplete(end.max(pos + RECORD_HEADER + missing)));
        };
        msg.extend_from_slice(fragment);
        pos = end;
        if want.is_none() && msg.len() >= 4 {
            if msg[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(HelloError::Malformed(
                    "the first handshake message is not a ClientHello",
                ));
            }
            let body_len =
                usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]);
            let w = 4 + body_len;
            if msg.len() < w && pos + RECORD_HEADER + (w - msg.len()) > MAX_CLIENT_HELLO {
                return Err(HelloError::TooLarge);
            }
            want = Some(w);
        }
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

const SHORT: HelloError = HelloError::Malformed("a length runs past the data that holds it");

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if n > self.0.len() {
            return Err(SHORT);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The server name in a ClientHello body (the part after the handshake header).
fn parse_body(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(body);
    let version = r.u16()?;
    if version >> 8 != 3 {
        return Err(HelloError::Malformed("client version is not 3.x"));
    }
    r.take(32)?; // random
    let session_id = usize::from(r.u8()?);
    if session_id > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    r.take(session_id)?;
    let suites = usize::from(r.u16()?);
    if suites < 2 || suites % 2 != 0 {
        return Err(HelloError::Malformed(
            "cipher suites length is not a positive even number",
        ));
    }
    r.take(suites)?;
    let compression = usize::from(r.u8()?);
    if compression == 0 {
        return Err(HelloError::Malformed("no compression method"));
    }
    r.take(compression)?;
    if r.is_empty() {
        // TLS 1.2 and older may omit the extensions block.
        return Ok(None);
    }
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut name = None;
    let mut seen = false;
    while !exts.is_empty() {
        let ty = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if ty == EXT_SERVER_NAME {
            if seen {
                return Err(HelloError::Malformed("two server_name extensions"));
            }
            seen = true;
            name = Some(parse_server_name(data)?);
        }
    }
    Ok(name)
}

/// The host name of a ClientHello's server_name extension data.
fn parse_server_name(data: &[u8]) -> Result<String, HelloError> {
    let mut r = Reader(data);
    let list_len = usize::from(r.u16()?);
    let mut list = Reader(r.take(list_len)?);
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the server name list"));
    }
    let mut name: Option<String> = None;
    if list.is_empty() {
        return Err(HelloError::Malformed("an empty server name list"));
    }
    while !list.is_empty() {
        if list.u8()? != NAME_TYPE_HOST {
            return Err(HelloError::Malformed(
                "a server name type other than host_name",
            ));
        }
        let len = usize::from(list.u16()?);
        let raw = list.take(len)?;
        if name.is_some() {
            // RFC 6066 §3: at most one name of a type; a server could pick the other one.
            return Err(HelloError::Malformed("more than one host name"));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|_| HelloError::Malformed("the server name is not a valid host name"))?;
        let parsed = DomainName::parse(text)
            .map_err(|_| HelloError::Malformed("the server name is not a valid host name"))?;
        name = Some(parsed.as_str().to_string());
    }
    name.ok_or(HelloError::Malformed("an empty server name list"))
}

#[cfg(test)]
#[path = "client_hello_tests.rs"]
mod tests;
