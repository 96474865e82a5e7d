//! Host-side traffic peers used by the end-to-end benchmarks and tests, the same for every
//! system under test: a TCP sink, a TCP source, a TCP echo (for 1-byte ping-pong) and a UDP
//! echo. Each serves a bounded number of connections and returns what it measured. The same
//! sink and source also run as clients ([`connect`]), which is how the benchmark measures the
//! host's own loopback ceiling with no VM in the path.

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
    sink_stream(accept(listener, timeout)?).map(|(t, _, _)| t)
}

/// Accepts one connection, writes `bytes` of the pattern and closes.
pub fn source_one(listener: &TcpListener, bytes: u64, timeout: Duration) -> io::Result<Transfer> {
    source_stream(accept(listener, timeout)?, bytes).map(|(t, _, _)| t)
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

/// Serves `n` connections at once with `serve` (one thread each) and sums them: bytes added,
/// seconds from the first connection's start to the last one's end, pattern ok if all were.
pub fn parallel<F>(
    listener: &TcpListener,
    n: u64,
    timeout: Duration,
    serve: F,
) -> io::Result<Transfer>
where
    F: Fn(TcpStream) -> io::Result<(Transfer, Instant, Instant)> + Clone + Send + 'static,
{
    let mut threads = Vec::new();
    for _ in 0..n {
        let s = accept(listener, timeout)?;
        let serve = serve.clone();
        threads.push(std::thread::spawn(move || serve(s)));
    }
    let mut total = Transfer {
        pattern_ok: true,
        ..Transfer::default()
    };
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for t in threads {
        let (tr, start, end) = t
            .join()
            .map_err(|_| io::Error::other("a connection thread panicked"))??;
        total.bytes += tr.bytes;
        total.pattern_ok &= tr.pattern_ok;
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    if let (Some(f), Some(l)) = (first, last) {
        total.seconds = l.duration_since(f).as_secs_f64();
    }
    Ok(total)
}

/// Reads one accepted connection to EOF, checking the pattern (for [`parallel`]).
pub fn sink_stream(mut s: TcpStream) -> io::Result<(Transfer, Instant, Instant)> {
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    // The pattern from every phase: one memcmp per read instead of a division per byte, so
    // the checking peer stays cheap next to the systems it measures.
    let reference = pattern_chunk(buf.len() + 251);
    let (mut total, mut ok) = (0u64, true);
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let phase = (total % 251) as usize;
        ok = ok && buf[..n] == reference[phase..phase + n];
        total += n as u64;
    }
    let t = Transfer {
        bytes: total,
        seconds: start.elapsed().as_secs_f64(),
        pattern_ok: ok,
    };
    Ok((t, start, Instant::now()))
}

/// The first `len` bytes of the pattern.
fn pattern_chunk(len: usize) -> Vec<u8> {
    (0..len as u64).map(pattern_byte).collect()
}

/// Writes `bytes` of the pattern to one accepted connection and waits for the peer to close
/// (for [`parallel`]).
pub fn source_stream(mut s: TcpStream, bytes: u64) -> io::Result<(Transfer, Instant, Instant)> {
    let start = Instant::now();
    let chunk = pattern_chunk(251 * 1024);
    let mut sent = 0u64;
    while sent < bytes {
        let offset = (sent % 251) as usize;
        let n = ((bytes - sent) as usize).min(chunk.len() - offset);
        s.write_all(&chunk[offset..offset + n])?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the peer to close so the data is really delivered; a peer that vanishes
    // without a FIN (a VM that exited) ends the wait with an error, which is fine here.
    let mut tail = [0u8; 64];
    while matches!(s.read(&mut tail), Ok(n) if n > 0) {}
    let t = Transfer {
        bytes: sent,
        seconds: start.elapsed().as_secs_f64(),
        pattern_ok: true,
    };
    Ok((t, start, Instant::now()))
}

/// Connects to `addr`, retrying until `timeout` (the listener may still be starting), with
/// the same read and write timeouts an accepted connection gets.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot connect to {addr}: {e}"),
                ))
            }
        }
    }
}

/// A thread that keeps one CPU busy until dropped: the stand-in for a guest vCPU that
/// busy-polls its rings (as the probe guest does), so that a VM-less transfer measures the
/// host under the same CPU pressure as a VM one.
pub struct BusyCore {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyCore {
    /// Starts spinning.
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        BusyCore {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BusyCore {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

    /// One wrong byte deep into the stream (after reads of odd sizes) fails the check.
    #[test]
    fn sink_catches_one_corrupt_byte() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || sink_one(&l, Duration::from_secs(10)));
        let mut c = TcpStream::connect(addr).unwrap();
        let mut data: Vec<u8> = (0..700_001u64).map(pattern_byte).collect();
        data[654_321] ^= 0x40;
        for part in data.chunks(77_777) {
            c.write_all(part).unwrap();
        }
        drop(c);
        let r = t.join().unwrap().unwrap();
        assert_eq!(r.bytes, 700_001);
        assert!(!r.pattern_ok);
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
