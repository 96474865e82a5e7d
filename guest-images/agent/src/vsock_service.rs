//! The agent's control channel on virtio-vsock: what an orchestrator reaches through the
//! VMM's vsock device (Firecracker's `CONNECT <port>` on the host's Unix socket), as Kata's
//! runtime reaches its agent.
//!
//! The agent listens on [`PORT`] (Kata's agent port) whenever the guest has a vsock device.
//! Each connection carries line requests, each answered before the next is read:
//! - `PING` → `PONG ringfence-agent <version>`
//! - `EXEC <shell command>` → `OUTPUT <n>`, then `n` bytes of the command's stdout and
//!   stderr, then `EXIT <status>` (a status as [`crate::status`] encodes it; 127 if it could
//!   not run)
//! - anything else → `ERROR <why>`
//!
//! Requests longer than [`MAX_LINE`] bytes close the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// The vsock port the agent listens on (Kata's agent port).
pub const PORT: u32 = 1024;
/// Longest request line.
pub const MAX_LINE: usize = 64 * 1024;
/// Most output an `EXEC` returns; the rest is cut.
pub const MAX_OUTPUT: usize = 1 << 20;

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `PING`.
    Ping,
    /// `EXEC <command>`.
    Exec(&'a str),
    /// Anything else, with why it was refused.
    Bad(String),
}

/// Parses one request line (without its newline).
pub fn parse(line: &str) -> Request<'_> {
    let line = line.trim_end_matches('\r');
    match line.split_once(' ') {
        _ if line == "PING" => Request::Ping,
        Some(("EXEC", cmd)) if !cmd.trim().is_empty() => Request::Exec(cmd),
        _ => Request::Bad(format!(
            "unknown request {:?}: expected PING or EXEC <command>",
            line.chars().take(40).collect::<String>()
        )),
    }
}

/// Serves one connection until the peer closes it.
pub fn serve<S: Read + Write>(stream: S) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 || line.len() > MAX_LINE {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line);
        let reply = match parse(&text) {
            Request::Ping => {
                format!("PONG ringfence-agent {}\n", env!("CARGO_PKG_VERSION")).into_bytes()
            }
            Request::Exec(cmd) => exec(cmd),
            Request::Bad(why) => format!("ERROR {why}\n").into_bytes(),
        };
        reader.get_mut().write_all(&reply)?;
    }
}

/// Runs `cmd` with `/bin/sh -c`, stdout and stderr together, and frames the answer.
fn exec(cmd: &str) -> Vec<u8> {
    let (mut output, code) = match run_shell(cmd) {
        Ok(done) => done,
        Err(e) => (format!("cannot run /bin/sh: {e}\n").into_bytes(), 127),
    };
    output.truncate(MAX_OUTPUT);
    let mut reply = format!("OUTPUT {}\n", output.len()).into_bytes();
    reply.extend_from_slice(&output);
    reply.extend_from_slice(format!("EXIT {code}\n").as_bytes());
    reply
}

/// Runs the shell and collects its output and exit code. The child is waited for through
/// [`crate::reaper`]: as PID 1 the agent's reaping loop may collect it first.
fn run_shell(cmd: &str) -> io::Result<(Vec<u8>, i32)> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec 2>&1; {cmd}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut output = Vec::new();
    if let Some(out) = child.stdout.take() {
        out.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut output)?;
    }
    let raw = crate::reaper::wait_child(child.id() as libc::pid_t);
    let code = if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        127
    };
    Ok((output, code))
}

/// Listens on [`PORT`] on a thread of its own and serves each connection on another; does
/// nothing when the guest has no vsock transport.
pub fn start() {
    let Ok(listener) = listen(PORT) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("vsock".into())
        .spawn(move || loop {
            match accept(&listener) {
                Ok(conn) => {
                    let _ = std::thread::Builder::new()
                        .name("vsock-conn".into())
                        .spawn(move || serve(std::fs::File::from(conn)));
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => return,
            }
        });
}

fn listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor this function owns from here on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes that outlives the call.
    let rc = unsafe { libc::bind(fd, (&raw const addr).cast(), len) };
    // SAFETY: listen(2) on the descriptor this function owns.
    if rc != 0 || unsafe { libc::listen(fd, 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: accept4 on a listening socket; null address pointers are allowed.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor accept4 just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory connection: the requests to read, the replies written.
    struct Pipe {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn exchange(input: &[u8]) -> String {
        let mut pipe = Pipe {
            input: io::Cursor::new(input.to_vec()),
            output: Vec::new(),
        };
        serve(&mut pipe).unwrap();
        String::from_utf8_lossy(&pipe.output).into_owned()
    }

    #[test]
    fn requests_parse() {
        assert_eq!(parse("PING"), Request::Ping);
        assert_eq!(parse("PING\r"), Request::Ping);
        assert_eq!(parse("EXEC echo hi"), Request::Exec("echo hi"));
        assert!(matches!(parse("EXEC  "), Request::Bad(_)));
        assert!(matches!(parse("REBOOT"), Request::Bad(_)));
    }

    #[test]
    fn a_connection_gets_one_answer_per_line() {
        let out = exchange(b"PING\nEXEC echo out; echo err >&2; exit 3\nNOPE\n");
        let mut lines = out.split_inclusive('\n');
        assert!(lines.next().unwrap().starts_with("PONG ringfence-agent "));
        assert_eq!(lines.next().unwrap(), "OUTPUT 8\n");
        assert_eq!(lines.next().unwrap(), "out\n");
        assert_eq!(lines.next().unwrap(), "err\n");
        assert_eq!(lines.next().unwrap(), "EXIT 3\n");
        assert!(lines
            .next()
            .unwrap()
            .starts_with("ERROR unknown request \"NOPE\""));
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn an_overlong_line_closes_the_connection() {
        let mut input = vec![b'A'; MAX_LINE + 10];
        input.extend_from_slice(b"\nPING\n");
        assert_eq!(exchange(&input), "");
    }
}
