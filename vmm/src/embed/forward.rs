//! Forwarding between the host and the guest on the embedder's terms:
//! [`VmHandle::expose`] (a host listener the embedder made, whose connections are carried
//! into a guest port like a published port's, zero-copy) and [`VmHandle::dial_out`] (a
//! connection to a host or remote address made as the guest would, judged by the guest's
//! policy).
//!
//! `expose` owns one thread per exposed listener, blocked in `accept(2)`; each accepted
//! connection is handed to the netstack on its control queue, after which the device thread
//! carries it like any other flow. This module never touches the datapath.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netstack::FlowProto;

use super::{GuestNet, NetHandleError, Proto};
use crate::handle::VmHandle;

/// How long [`VmHandle::dial_out`] waits for the netstack's verdict.
const VERDICT_WAIT: Duration = Duration::from_secs(5);
/// How long [`VmHandle::dial_out`] waits for the connection to be established.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of fds) before the next, so a persistent error
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A host listener whose connections go into the guest, from [`VmHandle::expose`]. Dropping
/// it stops accepting (connections already carried stay up) and closes the listener.
#[derive(Debug)]
pub struct Exposed {
    stop: Arc<AtomicBool>,
    listener_fd: i32,
    local: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Exposed {
    /// The address the host listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Exposed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: the listener is owned by the accept thread, which has not been joined yet, so
        // `listener_fd` is still its open descriptor; shutdown(2) only wakes its blocked
        // accept (which then fails with EINVAL) and closes nothing.
        unsafe {
            libc::shutdown(self.listener_fd, libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl VmHandle {
    /// Carries every connection accepted on `listener` (a host listener the embedder
    /// bound, e.g. `127.0.0.1:8080`) into the guest's `guest_port`, the way a published port
    /// (`-p`) is carried: same translation, no copy through the embedder. The embedder
    /// chose to expose it, so the guest's ingress policy is not asked.
    ///
    /// ```no_run
    /// use std::net::TcpListener;
    /// use ringfence::embed::Proto;
    /// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let web = vm.expose(Proto::Tcp, 80, TcpListener::bind("127.0.0.1:8080")?)?;
    /// println!("the guest's port 80 is at http://{}", web.local_addr());
    /// # Ok(()) }
    /// ```
    pub fn expose(
        &self,
        proto: Proto,
        guest_port: u16,
        listener: TcpListener,
    ) -> Result<Exposed, NetHandleError> {
        if proto != Proto::Tcp {
            return Err(NetHandleError::Unsupported { what: "expose" });
        }
        if guest_port == 0 {
            return Err(NetHandleError::PortZero);
        }
        let net = self.guest_net_checked()?.clone();
        let local = listener.local_addr().map_err(NetHandleError::SocketPair)?;
        let stop = Arc::new(AtomicBool::new(false));
        let listener_fd = listener.as_raw_fd();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("expose-{guest_port}"))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let stream = match listener.accept() {
                            Ok((s, _)) => s,
                            Err(_) => {
                                if !stop.load(Ordering::SeqCst) {
                                    std::thread::sleep(ACCEPT_BACKOFF);
                                }
                                continue;
                            }
                        };
                        let task = Box::new(move |stack: &mut netstack::Netstack| {
                            if let Err(e) =
                                stack.connect_guest_tcp(stream, guest_port, Instant::now())
                            {
                                eprintln!("ringfence: expose to guest port {guest_port}: {e}");
                            }
                        });
                        if net.run(task).is_err() {
                            // The VM is gone: nothing more to carry.
                            break;
                        }
                    }
                })
                .map_err(|source| NetHandleError::Thread {
                    what: "expose accept",
                    source,
                })?
        };
        Ok(Exposed {
            stop,
            listener_fd,
            local,
            thread: Some(thread),
        })
    }

    /// Connects to `addr` as the guest would: the guest's policy judges it (as an egress TCP
    /// flow to that address), and the gateway address means the host's loopback. Returns the
    /// connected stream, or why not ([`NetHandleError::Denied`] names the deciding rule).
    /// Needs the guest's network device up (the policy lives on the device thread).
    ///
    /// ```no_run
    /// use ringfence::embed::Proto;
    /// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let api = vm.dial_out(Proto::Tcp, "203.0.113.7:443".parse()?)?;
    /// # Ok(()) }
    /// ```
    pub fn dial_out(&self, proto: Proto, addr: SocketAddr) -> Result<TcpStream, NetHandleError> {
        if proto != Proto::Tcp {
            return Err(NetHandleError::Unsupported { what: "dial_out" });
        }
        if addr.port() == 0 {
            return Err(NetHandleError::PortZero);
        }
        self.guest_net_checked()?.dial_out(addr)
    }
}

impl GuestNet {
    /// [`VmHandle::dial_out`] once the arguments are checked: blocks for the verdict and the
    /// connect.
    pub(crate) fn dial_out(&self, addr: SocketAddr) -> Result<TcpStream, NetHandleError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.run(Box::new(move |stack| {
            let _ = tx.send(stack.judge_egress(FlowProto::Tcp, addr));
        }))?;
        let target = match rx.recv_timeout(VERDICT_WAIT) {
            Ok(Ok(target)) => target,
            Ok(Err(verdict)) => {
                return Err(NetHandleError::Denied {
                    addr,
                    by: match verdict.rule {
                        Some(i) => format!("rule {}", i + 1),
                        None => "the default egress action".into(),
                    },
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(NetHandleError::NotReady)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(NetHandleError::Stopped)
            }
        };
        TcpStream::connect_timeout(&target, CONNECT_WAIT).map_err(|source| {
            NetHandleError::Connect {
                addr: target,
                source,
            }
        })
    }
}
