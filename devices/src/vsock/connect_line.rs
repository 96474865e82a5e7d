//! The host side's connection command: a host program that connected to `uds_path` writes
//! `CONNECT <port>\n` and, once the guest accepted, reads `OK <host_port>\n` (Firecracker's
//! documented protocol, `docs/vsock.md` in its repository).
//!
//! As Firecracker reads it: the line is at most [`MAX_LINE`] bytes including the newline; the
//! keyword is case-insensitive; words are separated by ASCII whitespace; the port is a decimal
//! `u32`. Unlike Firecracker, a line with more than two words is refused rather than
//! ignoring the rest, and the bytes are read without blocking the device thread (a client
//! that sends half a line waits on the poll, not on us). Bytes that arrive after the newline
//! in the same read are kept and delivered to the guest first once the connection is up.

/// Longest accepted command line, newline included (Firecracker's bound).
pub const MAX_LINE: usize = 32;

/// Why a command line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// No newline within [`MAX_LINE`] bytes.
    TooLong,
    /// Not valid UTF-8 / ASCII text.
    NotText,
    /// The first word is not `CONNECT`, or there are not exactly two words.
    Syntax,
    /// The port is not a decimal number that fits 32 bits.
    BadPort,
}

/// Accumulates the bytes of one client's command line.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: [u8; MAX_LINE],
    len: usize,
}

/// What [`LineBuffer::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineState {
    /// More bytes are needed.
    Incomplete,
    /// A complete, valid line: the guest port, and bytes that followed the newline.
    Connect {
        /// The guest port the client asked for.
        port: u32,
        /// Bytes after the newline (the start of the client's stream).
        rest: Vec<u8>,
    },
}

impl LineBuffer {
    /// The free space the next read may fill.
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Records that `n` bytes were read into [`Self::spare`] and checks the line.
    pub fn take(&mut self, n: usize) -> Result<LineState, LineError> {
        let before = self.len;
        self.len = (self.len + n).min(MAX_LINE);
        let Some(nl) = self.buf[before..self.len].iter().position(|&b| b == b'\n') else {
            return if self.len == MAX_LINE {
                Err(LineError::TooLong)
            } else {
                Ok(LineState::Incomplete)
            };
        };
        let end = before + nl;
        let port = parse_line(&self.buf[..end])?;
        Ok(LineState::Connect {
            port,
            rest: self.buf[end + 1..self.len].to_vec(),
        })
    }
}

/// Parses the line without its newline.
pub fn parse_line(line: &[u8]) -> Result<u32, LineError> {
    let text = std::str::from_utf8(line).map_err(|_| LineError::NotText)?;
    let mut words = text.split_ascii_whitespace();
    let (Some(keyword), Some(port), None) = (words.next(), words.next(), words.next()) else {
        return Err(LineError::Syntax);
    };
    if !keyword.eq_ignore_ascii_case("connect") {
        return Err(LineError::Syntax);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LineError::BadPort);
    }
    port.parse::<u32>().map_err(|_| LineError::BadPort)
}

/// The acknowledgement written to the client once the guest accepted: `OK <host_port>\n`.
pub fn ok_line(local_port: u32) -> String {
    format!("OK {local_port}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]]) -> Result<LineState, LineError> {
        let mut lb = LineBuffer::default();
        let mut last = Ok(LineState::Incomplete);
        for c in chunks {
            let spare = lb.spare();
            let n = c.len().min(spare.len());
            spare[..n].copy_from_slice(&c[..n]);
            last = lb.take(n);
            if !matches!(last, Ok(LineState::Incomplete)) {
                return last;
            }
        }
        last
    }

    #[test]
    fn lines_in_one_or_many_pieces_give_the_port_and_the_rest() {
        assert_eq!(
            feed(&[b"CONNECT 52\n"]),
            Ok(LineState::Connect {
                port: 52,
                rest: vec![]
            })
        );
        assert_eq!(
            feed(&[b"conn", b"ect  4294967295 ", b"\nhello"]),
            Ok(LineState::Connect {
                port: u32::MAX,
                rest: b"hello".to_vec()
            })
        );
        assert_eq!(feed(&[b"CONNECT 5"]), Ok(LineState::Incomplete));
    }

    #[test]
    fn malformed_lines_are_refused_with_their_reason() {
        assert_eq!(feed(&[b"CONNECT 4294967296\n"]), Err(LineError::BadPort));
        assert_eq!(feed(&[b"CONNECT -1\n"]), Err(LineError::BadPort));
        assert_eq!(feed(&[b"CONNECT +1\n"]), Err(LineError::BadPort));
        assert_eq!(feed(&[b"CONNECT\n"]), Err(LineError::Syntax));
        assert_eq!(feed(&[b"LISTEN 52\n"]), Err(LineError::Syntax));
        assert_eq!(feed(&[b"CONNECT 52 53\n"]), Err(LineError::Syntax));
        assert_eq!(feed(&[b"CONNECT \xff2\n"]), Err(LineError::NotText));
        assert_eq!(feed(&[&[b'x'; 40]]), Err(LineError::TooLong));
        assert_eq!(ok_line(1 << 30), "OK 1073741824\n");
    }
}
