//! The embedding API's network handles: connections between the embedding program and one
//! VM's guest that never open a host port, and pcap capture started at run time.
//!
//! Everything here talks to the VM's netstack through its control queue
//! ([`StackControl`]): a closure runs on the device thread between two batches, so the
//! datapath takes no lock and no extra syscall for it. Connections are carried over Unix
//! socket pairs: the netstack holds one end as the "host socket" of an ordinary TCP flow
//! (the same translation as any other flow), the embedder gets the other end as a
//! [`UnixStream`].
//!
//! - [`VmHandle::dial_guest`]: a stream into a guest service (as a published port's
//!   connection would be, but with no host listener);
//! - [`VmHandle::listen`] (also [`Vm::listen`] before start): a service only this guest can
//!   reach, at the gateway address or `host.ringfence.internal`, whatever its policy says;
//! - [`VmHandle::expose`] and [`VmHandle::dial_out`] ([`forward`]): a host listener of the
//!   embedder's whose connections go into the guest, and a connection made as the guest;
//! - [`VmHandle::forward`] ([`relay`]): the guest's connections to a [`GuestListener`]
//!   carried to a host address of the embedder's choosing ([`Forwarded`]);
//! - with the `tokio` feature, `async_net`: the same streams as tokio sockets
//!   (`dial_guest_async`, `dial_out_async`, `GuestListener::into_async`);
//! - [`VmHandle::capture`]: pcap of the device's frames into any writer, started and stopped
//!   at run time ([`Capture`]).
//!
//! This module owns no thread of its own except a capture's writer and the threads of an
//! `expose` or a `forward`, and must never block the device thread.

use std::collections::HashSet;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::net::backend::user::{StackControl, StackTask};
use devices::net::pcap::{CaptureControl, CaptureSwitch, PcapError};

use crate::handle::VmHandle;
use crate::vm::Vm;

#[cfg(feature = "tokio")]
pub mod async_net;
pub mod forward;
pub mod packet;
pub mod relay;

#[cfg(feature = "tokio")]
pub use async_net::AsyncGuestListener;
pub use forward::Exposed;
pub use packet::{GuestPacketConn, GuestPacketListener};
pub use relay::Forwarded;

/// How many guest connections to a [`GuestListener`] may wait for `accept`; more are refused
/// (the guest sees a reset).
pub const LISTEN_BACKLOG: usize = 64;

/// Transport protocol of a network handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP: a byte stream.
    Tcp,
    /// UDP: datagrams (see [`VmHandle::listen_packet`] and [`VmHandle::dial_guest_packet`]).
    Udp,
}

/// Why a network handle could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum NetHandleError {
    /// The VM has stopped; its network is gone.
    #[error("the VM has stopped: its network handles no longer work (start a new VM)")]
    Stopped,
    /// The VM has no userspace network.
    #[error("this needs the user-mode network: set VmConfig::net.backend to NetBackendSpec::User (--net user)")]
    NoUserNet,
    /// Port 0 was given.
    #[error("port 0 is not a port: give 1-65535")]
    PortZero,
    /// A second `listen` on one port of one VM.
    #[error("port {port} of this VM already has a listener: drop that GuestListener first")]
    PortTaken {
        /// The port asked for.
        port: u16,
    },
    /// The protocol is not supported by this handle.
    #[error("{what} carries TCP streams only: for UDP use listen_packet / dial_guest_packet")]
    Unsupported {
        /// The handle.
        what: &'static str,
    },
    /// A socket pair could not be created.
    #[error("cannot create a socket pair: {0} (out of file descriptors?)")]
    SocketPair(#[source] std::io::Error),
    /// The guest's policy does not allow the destination of [`VmHandle::dial_out`].
    #[error("the guest's policy denies {addr} ({by}); add a rule that allows it, e.g. --net-rule allow@{ip}:tcp:{port}", ip = addr.ip(), port = addr.port())]
    Denied {
        /// The destination asked for.
        addr: std::net::SocketAddr,
        /// What decided: a rule by number, or the default egress action.
        by: String,
    },
    /// The guest has not brought its network device up, so its netstack cannot answer yet.
    #[error("the guest's network device is not running yet (the guest has not set it up): retry once the guest is up")]
    NotReady,
    /// Connecting to the destination failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The destination (after mapping the gateway to the host's loopback).
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stream could not be handed to the tokio runtime.
    #[error("cannot register the stream with the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The VM has no network device to capture from.
    #[error(
        "the VM has no network device to capture: set VmConfig::net.backend (--net user or tap)"
    )]
    NoNetDevice,
    /// The capture could not be started.
    #[error(transparent)]
    Capture(#[from] PcapError),
}

/// The embedding side of one VM's network: the netstack's control queue and the ports that
/// have listeners. Shared by [`Vm`] (before start) and [`VmHandle`].
#[derive(Clone, Debug)]
pub(crate) struct GuestNet {
    control: StackControl,
    /// Ports with a listener: (protocol, port).
    listening: Arc<Mutex<HashSet<(Proto, u16)>>>,
}

impl GuestNet {
    /// A control queue; the receiver goes to the netstack when the VM is built.
    pub(crate) fn new() -> (GuestNet, Receiver<StackTask>) {
        let (control, tasks) = StackControl::new();
        (
            GuestNet {
                control,
                listening: Arc::default(),
            },
            tasks,
        )
    }

    /// The control queue, for the `user` backend.
    pub(crate) fn control(&self) -> &StackControl {
        &self.control
    }

    pub(crate) fn run(&self, task: StackTask) -> Result<(), NetHandleError> {
        self.control.run(task).map_err(|_| NetHandleError::Stopped)
    }

    /// Marks `(proto, port)` as listened on; fails if it already is.
    pub(crate) fn claim(&self, proto: Proto, port: u16) -> Result<(), NetHandleError> {
        let mut ports = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        if ports.insert((proto, port)) {
            Ok(())
        } else {
            Err(NetHandleError::PortTaken { port })
        }
    }

    /// Undoes [`claim`](Self::claim).
    pub(crate) fn release(&self, proto: Proto, port: u16) {
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(proto, port));
    }

    fn listen(&self, proto: Proto, port: u16) -> Result<GuestListener, NetHandleError> {
        if proto != Proto::Tcp {
            return Err(NetHandleError::Unsupported { what: "listen" });
        }
        if port == 0 {
            return Err(NetHandleError::PortZero);
        }
        self.claim(Proto::Tcp, port)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(LISTEN_BACKLOG);
        let listener = GuestListener {
            accepted: rx,
            port,
            net: self.clone(),
        };
        self.run(Box::new(move |stack| stack.add_guest_service(port, tx)))?;
        Ok(listener)
    }

    fn dial(&self, proto: Proto, port: u16) -> Result<UnixStream, NetHandleError> {
        if proto != Proto::Tcp {
            return Err(NetHandleError::Unsupported { what: "dial_guest" });
        }
        if port == 0 {
            return Err(NetHandleError::PortZero);
        }
        let (ours, theirs) = UnixStream::pair().map_err(NetHandleError::SocketPair)?;
        self.run(Box::new(move |stack| {
            // On failure `theirs` is dropped here: the embedder's end reads EOF.
            if let Err(e) = stack.connect_guest(theirs, port, Instant::now()) {
                eprintln!("ringfence: dial_guest to port {port}: {e}");
            }
        }))?;
        Ok(ours)
    }
}

/// A service the guest reaches at the gateway address (or `host.ringfence.internal`) on one
/// TCP port, from [`VmHandle::listen`]. Each guest connection arrives as a blocking
/// [`UnixStream`]. Dropping it stops the service (later guest connections to the port are
/// judged by the policy as ordinary host connections).
#[derive(Debug)]
pub struct GuestListener {
    accepted: Receiver<UnixStream>,
    port: u16,
    net: GuestNet,
}

impl GuestListener {
    /// Waits for the guest's next connection. Fails with [`NetHandleError::Stopped`] once
    /// the VM has stopped.
    pub fn accept(&self) -> Result<UnixStream, NetHandleError> {
        self.accepted.recv().map_err(|_| NetHandleError::Stopped)
    }

    /// Like [`accept`](Self::accept), but returns `Ok(None)` after `limit`.
    pub fn accept_timeout(&self, limit: Duration) -> Result<Option<UnixStream>, NetHandleError> {
        match self.accepted.recv_timeout(limit) {
            Ok(s) => Ok(Some(s)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(NetHandleError::Stopped),
        }
    }

    /// The guest-side port the service is on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for GuestListener {
    fn drop(&mut self) {
        let port = self.port;
        self.net.release(Proto::Tcp, port);
        // A stopped VM has nothing to remove.
        let _ = self.net.run(Box::new(move |stack| {
            stack.remove_guest_service(port);
        }));
    }
}

impl Vm {
    /// Like [`VmHandle::listen`], registered before the guest runs, so that a guest that
    /// connects at once finds the service.
    ///
    /// ```no_run
    /// use ringfence::embed::Proto;
    /// use ringfence::net::NetBackendSpec;
    /// use ringfence::{Vm, VmConfig};
    ///
    /// let mut config = VmConfig::new("probe.elf");
    /// config.net.backend = NetBackendSpec::User;
    /// let mut vm = Vm::new(config);
    /// let tools = vm.listen(Proto::Tcp, 9000)?;
    /// let vm = vm.start()?;
    /// let conn = tools.accept()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn listen(&mut self, proto: Proto, port: u16) -> Result<GuestListener, NetHandleError> {
        if !self.has_user_net() {
            return Err(NetHandleError::NoUserNet);
        }
        self.guest_net().listen(proto, port)
    }
}

impl VmHandle {
    /// Opens a TCP connection into the guest's `port`, carried by the netstack with no host
    /// port involved; the guest sees it come from the gateway address. Returns at once: if
    /// nothing listens on the port, the guest resets the connection and the stream reads
    /// EOF. Not subject to the guest's policy (the embedder is trusted).
    ///
    /// ```no_run
    /// use std::io::{Read, Write};
    /// use ringfence::embed::Proto;
    /// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut conn = vm.dial_guest(Proto::Tcp, 8080)?;
    /// conn.write_all(b"ping")?;
    /// let mut reply = [0u8; 4];
    /// conn.read_exact(&mut reply)?;
    /// # Ok(()) }
    /// ```
    pub fn dial_guest(&self, proto: Proto, port: u16) -> Result<UnixStream, NetHandleError> {
        let net = self.guest_net_checked()?;
        net.dial(proto, port)
    }

    /// Serves `port` on the gateway addresses to this guest only: the guest connects to
    /// `host.ringfence.internal:PORT` (or the gateway IP) and the connection is accepted from
    /// the returned listener. No host port is opened, and the guest's policy does not apply
    /// (the service is the embedder's own). One listener per port and VM.
    ///
    /// ```no_run
    /// use std::io::Read;
    /// use ringfence::embed::Proto;
    /// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = vm.listen(Proto::Tcp, 7000)?;
    /// let mut conn = listener.accept()?;
    /// let mut request = Vec::new();
    /// conn.read_to_end(&mut request)?;
    /// # Ok(()) }
    /// ```
    pub fn listen(&self, proto: Proto, port: u16) -> Result<GuestListener, NetHandleError> {
        let net = self.guest_net_checked()?;
        net.listen(proto, port)
    }

    /// Starts a pcap capture of the network device's frames (both directions, as the device
    /// sees them) into `out`, keeping the first `snaplen` bytes of each frame (`None`: whole
    /// frames). The device thread only copies frames into a bounded pool; a writer thread
    /// formats and writes them, and frames that find the pool empty are left out and counted
    /// ([`Capture::dropped`]). One capture per VM at a time; stop it with [`Capture::stop`]
    /// or by dropping it.
    ///
    /// ```no_run
    /// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let file = std::fs::File::create("guest.pcap")?;
    /// let mut capture = vm.capture(file, Some(128))?;
    /// // ... traffic ...
    /// let dropped = capture.stop();
    /// # Ok(()) }
    /// ```
    pub fn capture(
        &self,
        out: impl std::io::Write + Send + 'static,
        snaplen: Option<u32>,
    ) -> Result<Capture, NetHandleError> {
        if !self.is_running() {
            return Err(NetHandleError::Stopped);
        }
        let switch = self
            .capture_switch()
            .ok_or(NetHandleError::NoNetDevice)?
            .clone();
        let control = switch.start(
            Box::new(out),
            snaplen.unwrap_or(devices::net::pcap::SNAPLEN_WHOLE),
            "embedder capture".into(),
        )?;
        Ok(Capture {
            control,
            switch,
            stopped: false,
        })
    }

    /// The VM's network control queue, or why it cannot be used.
    pub(crate) fn guest_net_checked(&self) -> Result<&GuestNet, NetHandleError> {
        if !self.is_running() {
            return Err(NetHandleError::Stopped);
        }
        self.guest_net().ok_or(NetHandleError::NoUserNet)
    }
}

/// A running pcap capture from [`VmHandle::capture`]. Dropping it stops it.
#[derive(Debug)]
pub struct Capture {
    control: CaptureControl,
    switch: Arc<CaptureSwitch>,
    stopped: bool,
}

impl Capture {
    /// Frames written so far.
    pub fn written(&self) -> u64 {
        self.control.stats().written.load(Ordering::Relaxed)
    }

    /// Frames left out so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.control.stats().dropped.load(Ordering::Relaxed)
    }

    /// Write errors of the output (the capture stops writing after the first).
    pub fn write_errors(&self) -> u64 {
        self.control.stats().write_errors.load(Ordering::Relaxed)
    }

    /// Stops the capture and waits (up to 10 s) until everything handed to the writer is
    /// written and flushed; frames still in the device thread's current batch are left out.
    /// Returns the number of frames dropped in all. Stopping twice does nothing more.
    pub fn stop(&mut self) -> u64 {
        if !self.stopped {
            self.stopped = true;
            self.switch.stop();
        }
        self.dropped()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}
