//! The network handles as tokio sockets (feature `tokio`): [`VmHandle::dial_guest_async`],
//! [`VmHandle::dial_out_async`] and [`GuestListener::into_async`] ([`AsyncGuestListener`]).
//! The streams are the same socket pairs and TCP sockets as the blocking handles', switched to
//! non-blocking mode and registered with the caller's runtime, so they implement tokio's
//! `AsyncRead` and `AsyncWrite`.
//!
//! Nothing here blocks a runtime worker: an async listener's connections come from the device
//! thread through a bounded tokio channel (its `try_send` never blocks the device thread
//! either), and `dial_out_async`'s wait for the policy's verdict and the connect runs on the
//! runtime's blocking pool. Every function must be called from within a tokio runtime with
//! I/O enabled (`enable_io`, or `enable_all`): tokio panics otherwise.

use std::os::unix::net::UnixStream as StdUnixStream;

use netstack::{ServiceQueue, ServiceRefusal};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;

use super::{GuestListener, NetHandleError, Proto, LISTEN_BACKLOG};
use crate::handle::VmHandle;

/// A guest service's queue for an [`AsyncGuestListener`]: the device thread offers each
/// connection without blocking, and the receiving task is woken.
struct AsyncServiceQueue(mpsc::Sender<StdUnixStream>);

impl ServiceQueue for AsyncServiceQueue {
    fn offer(&mut self, stream: StdUnixStream) -> Result<(), ServiceRefusal> {
        self.0.try_send(stream).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServiceRefusal::Full,
            mpsc::error::TrySendError::Closed(_) => ServiceRefusal::Gone,
        })
    }
}

/// Registers a blocking socket-pair end with the current runtime.
fn unix_to_tokio(stream: StdUnixStream) -> Result<UnixStream, NetHandleError> {
    stream
        .set_nonblocking(true)
        .map_err(NetHandleError::Runtime)?;
    UnixStream::from_std(stream).map_err(NetHandleError::Runtime)
}

/// A [`GuestListener`] whose connections arrive as tokio streams, from
/// [`GuestListener::into_async`]. Dropping it stops the service, as dropping a
/// `GuestListener` does.
///
/// ```no_run
/// use ringfence::embed::{AsyncGuestListener, Proto};
/// use tokio::io::AsyncReadExt;
/// # async fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tools: AsyncGuestListener = vm.listen(Proto::Tcp, 9000)?.into_async();
/// println!("serving the guest on port {}", tools.port());
/// let mut request = Vec::new();
/// tools.accept().await?.read_to_end(&mut request).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncGuestListener {
    /// Keeps the port claimed; its drop removes the service.
    listener: GuestListener,
    accepted: mpsc::Receiver<StdUnixStream>,
}

impl AsyncGuestListener {
    /// Waits for the guest's next connection without blocking the runtime. Fails with
    /// [`NetHandleError::Stopped`] once the VM has stopped. Cancel-safe: a connection is
    /// never lost when the future is dropped before it completes.
    ///
    /// ```no_run
    /// use ringfence::embed::Proto;
    /// use tokio::io::AsyncWriteExt;
    /// # async fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut listener = vm.listen(Proto::Tcp, 7000)?.into_async();
    /// let mut conn = listener.accept().await?;
    /// conn.write_all(b"hello, guest").await?;
    /// # Ok(()) }
    /// ```
    pub async fn accept(&mut self) -> Result<UnixStream, NetHandleError> {
        let stream = self.accepted.recv().await.ok_or(NetHandleError::Stopped)?;
        unix_to_tokio(stream)
    }

    /// The guest-side port the service is on.
    pub fn port(&self) -> u16 {
        self.listener.port()
    }
}

impl GuestListener {
    /// This listener with an `async` [`accept`](AsyncGuestListener::accept) that hands out
    /// tokio streams (feature `tokio`). Connections already waiting are kept. Needs no
    /// runtime itself; `accept` does.
    ///
    /// ```no_run
    /// use ringfence::embed::Proto;
    /// # async fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut listener = vm.listen(Proto::Tcp, 7000)?.into_async();
    /// loop {
    ///     let conn = listener.accept().await?;
    ///     tokio::spawn(async move { /* serve `conn` */ drop(conn) });
    /// }
    /// # }
    /// ```
    pub fn into_async(mut self) -> AsyncGuestListener {
        let (tx, rx) = mpsc::channel(LISTEN_BACKLOG);
        // The blocking queue is handed to the device thread, which replaces it with the async
        // one and then moves over what was waiting in it: the device thread is the only
        // sender, so nothing can arrive in the old queue after that.
        let (_, closed) = std::sync::mpsc::sync_channel(0);
        let waiting = std::mem::replace(&mut self.accepted, closed);
        let port = self.port;
        // If the VM has stopped, the task (and `tx` in it) is dropped: `accept` then fails
        // with `Stopped`.
        let _ = self.net.run(Box::new(move |stack| {
            let mut queue = AsyncServiceQueue(tx);
            while let Ok(s) = waiting.try_recv() {
                let _ = queue.offer(s);
            }
            stack.add_guest_service(port, queue);
        }));
        AsyncGuestListener {
            listener: self,
            accepted: rx,
        }
    }
}

impl VmHandle {
    /// [`dial_guest`](VmHandle::dial_guest) as a tokio stream (feature `tokio`): returns at
    /// once, like the blocking call.
    ///
    /// ```no_run
    /// use ringfence::embed::Proto;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # async fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut conn = vm.dial_guest_async(Proto::Tcp, 8080).await?;
    /// conn.write_all(b"ping").await?;
    /// let mut reply = [0u8; 4];
    /// conn.read_exact(&mut reply).await?;
    /// # Ok(()) }
    /// ```
    pub async fn dial_guest_async(
        &self,
        proto: Proto,
        port: u16,
    ) -> Result<UnixStream, NetHandleError> {
        unix_to_tokio(self.dial_guest(proto, port)?)
    }

    /// [`dial_out`](VmHandle::dial_out) as a tokio stream (feature `tokio`): judged by the
    /// guest's policy the same way. The wait for the verdict and the connect run on the
    /// runtime's blocking pool (`spawn_blocking`), never on a worker.
    ///
    /// ```no_run
    /// use ringfence::embed::Proto;
    /// # async fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let api = vm.dial_out_async(Proto::Tcp, "203.0.113.7:443".parse()?).await?;
    /// # Ok(()) }
    /// ```
    pub async fn dial_out_async(
        &self,
        proto: Proto,
        addr: std::net::SocketAddr,
    ) -> Result<TcpStream, NetHandleError> {
        if proto != Proto::Tcp {
            return Err(NetHandleError::Unsupported {
                what: "dial_out_async",
            });
        }
        if addr.port() == 0 {
            return Err(NetHandleError::PortZero);
        }
        let net = self.guest_net_checked()?.clone();
        let stream = tokio::task::spawn_blocking(move || net.dial_out(addr))
            .await
            .map_err(|e| NetHandleError::Thread {
                what: "dial_out_async blocking",
                source: std::io::Error::other(e.to_string()),
            })??;
        stream
            .set_nonblocking(true)
            .map_err(NetHandleError::Runtime)?;
        TcpStream::from_std(stream).map_err(NetHandleError::Runtime)
    }
}
