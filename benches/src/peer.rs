//! Host-side traffic peers used by the end-to-end benchmarks and tests, the same for every
//! system under test: a TCP sink, a TCP source, a TCP echo (for 1-byte ping-pong) and a UDP
//! echo. Each serves a bounded number of connections and returns what it measured.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The byte pattern both sides use: `byte[i] = i % 251`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// What one connection carried.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transfer {
    /// Bytes moved.
    pub bytes: u64,
    /// First byte to last byte.
    pub seconds: f64,
    /// Whether every byte matched the pattern (sink only; true for other roles).
    pub pattern_ok: bool,
}

impl Transfer {
    /// Throughput in Gbit/s.
    pub fn gbps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 * 8.0 / self.seconds / 1e9
        } else {
            0.0
        }
    }
}

fn accept(listener: &TcpListener, timeout: Duration) -> io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no connection arrived",
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accepts one connection and reads it to EOF, checking the pattern.
pub fn sink_one(listener: &TcpListener, timeout: Duration) -> io::Result<Transfer> {
    let mut s = accept(listener, timeout)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut ok = true;
    let mut first: Option<Instant> = None;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        if ok {
            ok = buf[..n]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(total + i as u64));
        }
        total += n as u64;
    }
    Ok(Transfer {
        bytes: total,
        seconds: first.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
        pattern_ok: ok,
    })
}

/// Accepts one connection, writes `bytes` of the pattern and closes.
pub fn source_one(listener: &TcpListener, bytes: u64, timeout: Duration) -> io::Result<Transfer> {
    let mut s = accept(listener, timeout)?;
    let chunk: Vec<u8> = (0..251u64 * 1024).map(pattern_byte).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        // `chunk` is a whole number of pattern periods, so any prefix continues the pattern.
        let offset = (sent % 251) as usize;
        let n = ((bytes - sent) as usize).min(chunk.len() - offset);
        s.write_all(&chunk[offset..offset + n])?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the peer to close so the data is really delivered before we report.
    let mut tail = [0u8; 64];
    while s.read(&mut tail)? > 0 {}
    Ok(Transfer {
        bytes: sent,
        seconds: start.elapsed().as_secs_f64(),
        pattern_ok: true,
    })
}

/// Accepts one connection and echoes it until EOF.
pub fn echo_one(listener: &TcpListener, timeout: Duration) -> io::Result<Transfer> {
    let mut s = accept(listener, timeout)?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let start = Instant::now();
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(Transfer {
        bytes: total,
        seconds: start.elapsed().as_secs_f64(),
        pattern_ok: true,
    })
}

/// Echoes UDP datagrams until `idle` passes without one, or `max` datagrams were echoed.
pub fn udp_echo(sock: &UdpSocket, idle: Duration, max: u64) -> io::Result<u64> {
    sock.set_read_timeout(Some(idle))?;
    let mut buf = [0u8; 65536];
    let mut count = 0;
    while count < max {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                sock.send_to(&buf[..n], from)?;
                count += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e),
        }
    }
    Ok(count)
}

/// Binds a TCP listener, with a clear error naming the address.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_and_sink_agree_on_the_pattern() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || source_one(&l, 1_000_003, Duration::from_secs(10)));
        let mut c = TcpStream::connect(addr).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        drop(c);
        assert_eq!(t.join().unwrap().unwrap().bytes, 1_000_003);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64)));

        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || sink_one(&l, Duration::from_secs(10)));
        let mut c = TcpStream::connect(addr).unwrap();
        let data: Vec<u8> = (0..500_000u64).map(pattern_byte).collect();
        c.write_all(&data).unwrap();
        drop(c);
        let r = t.join().unwrap().unwrap();
        assert_eq!(r.bytes, 500_000);
        assert!(r.pattern_ok);
    }

    #[test]
    fn echo_returns_what_it_got() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || echo_one(&l, Duration::from_secs(10)));
        let mut c = TcpStream::connect(addr).unwrap();
        for i in 0..100u8 {
            c.write_all(&[i]).unwrap();
            let mut b = [0u8];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i);
        }
        drop(c);
        assert_eq!(t.join().unwrap().unwrap().bytes, 100);
    }
}
