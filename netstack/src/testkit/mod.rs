//! In-process harness where smoltcp plays the guest (design §3.5, §6): a smoltcp
//! [`Interface`] on a loopback "phy" whose frames go to and come from a [`Netstack`] in the
//! same thread, plus a tiny `poll(2)` event loop for the netstack's host fds.
//!
//! Only built with the `testkit` feature; used by the integration tests and the
//! criterion benches. Loops are bounded by the callers' iteration and time limits.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use crate::{InterestSet, NetConfig, Netstack, TxMeta};

mod forge;
mod synthetic;
mod tls;
pub use forge::FrameForge;
pub use synthetic::SyntheticTcp;
pub use tls::{rustls_client_hello, tls_records};

/// What the fault hook does with a frame the guest sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Deliver it.
    Pass,
    /// Lose it.
    Drop,
    /// Deliver it after the next frame (reordering).
    Hold,
}

/// Frames between smoltcp and the netstack.
#[derive(Default)]
pub struct Wire {
    /// Frames for the smoltcp guest (netstack -> guest).
    pub to_guest: VecDeque<Vec<u8>>,
    /// Frames the smoltcp guest sent (guest -> netstack).
    pub from_guest: VecDeque<Vec<u8>>,
    /// Ethernet MTU reported to smoltcp (frame size incl. header).
    pub mtu: usize,
}

/// Receive token of [`Wire`].
pub struct Rx(Vec<u8>);
/// Transmit token of [`Wire`].
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0u8; len];
        let r = f(&mut v);
        self.0.push_back(v);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: SInstant) -> Option<(Rx, Tx<'_>)> {
        let f = self.to_guest.pop_front()?;
        Some((Rx(f), Tx(&mut self.from_guest)))
    }

    fn transmit(&mut self, _t: SInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.from_guest))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// Observer of frames to the guest.
pub type FrameObserver = Box<dyn FnMut(&[u8])>;

/// Guest fault hook: decides per frame whether it reaches the netstack.
pub type FaultHook = Box<dyn FnMut(&[u8]) -> Fault>;

/// smoltcp guest + netstack + host fd poller.
pub struct Harness {
    /// The netstack under test.
    pub ns: Netstack,
    /// The guest's interface.
    pub iface: Interface,
    /// The guest's sockets.
    pub sockets: SocketSet<'static>,
    /// The link.
    pub wire: Wire,
    /// Optional fault injection on guest -> netstack frames.
    pub fault: Option<FaultHook>,
    /// Optional fault injection on netstack -> guest frames (`Hold` acts as `Pass`).
    pub fault_to_guest: Option<FaultHook>,
    /// Optional observer of netstack -> guest frames.
    pub observe: Option<FrameObserver>,
    held: Option<Vec<u8>>,
    fds: InterestSet,
    start: Instant,
    rx: Vec<u8>,
    /// Frames passed each way (guest->netstack, netstack->guest).
    pub frames: (u64, u64),
    /// Host fd readiness is not reported to the netstack while set (a lost wake-up).
    pub deaf_to_fds: bool,
}

impl Harness {
    /// A guest with the static address the netstack's DHCP would hand out.
    pub fn new(cfg: NetConfig) -> Self {
        let mut h = Self::unconfigured(cfg);
        let (guest, gw) = h.ns.ipv4_addresses();
        h.iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(guest), 30));
        });
        let _ = h.iface.routes_mut().add_default_ipv4_route(gw);
        h
    }

    /// A configured guest whose netstack asks `gate` about flows.
    pub fn with_gate(cfg: NetConfig, gate: Box<dyn crate::FlowGate>) -> Self {
        let mut h = Self::new(cfg);
        h.ns.set_gate(gate);
        h
    }

    /// A guest with no address (for DHCP tests).
    pub fn unconfigured(cfg: NetConfig) -> Self {
        let mac = EthernetAddress(cfg.guest_mac);
        let mtu = usize::from(cfg.mtu) + 14;
        let ns = match Netstack::new(cfg) {
            Ok(ns) => ns,
            Err(e) => panic!("testkit: netstack creation failed: {e}"),
        };
        let mut wire = Wire {
            mtu,
            ..Wire::default()
        };
        let start = Instant::now();
        let iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(mac)),
            &mut wire,
            SInstant::from_micros(0),
        );
        Harness {
            ns,
            iface,
            sockets: SocketSet::new(Vec::new()),
            wire,
            fault: None,
            fault_to_guest: None,
            observe: None,
            held: None,
            fds: InterestSet::new(),
            start,
            rx: vec![0u8; 65550],
            frames: (0, 0),
            deaf_to_fds: false,
        }
    }

    /// smoltcp's clock.
    pub fn stime(&self) -> SInstant {
        SInstant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// Gateway IPv4 address.
    pub fn gateway(&self) -> Ipv4Address {
        self.ns.ipv4_addresses().1
    }

    /// A guest TCP socket (`rx_bytes` of receive buffer, 4 KiB to send) connecting from
    /// `local_port` to the gateway's `port`, which the netstack carries to the host's
    /// loopback. Panics if smoltcp refuses (test set-up).
    pub fn connect_gateway_tcp(
        &mut self,
        port: u16,
        local_port: u16,
        rx_bytes: usize,
    ) -> smoltcp::iface::SocketHandle {
        use smoltcp::socket::tcp;
        let rx = tcp::SocketBuffer::new(vec![0; rx_bytes]);
        let tx = tcp::SocketBuffer::new(vec![0; 4096]);
        let s = self.sockets.add(tcp::Socket::new(rx, tx));
        let gw = smoltcp::wire::IpEndpoint::new(IpAddress::Ipv4(self.gateway()), port);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(s)
            .connect(cx, gw, local_port)
            .expect("smoltcp connect");
        s
    }

    /// One round: guest poll, guest frames -> netstack, host fds, timers, netstack
    /// frames -> guest, guest poll. Waits up to `wait_ms` for host fds if idle.
    pub fn step(&mut self, wait_ms: i32) {
        let now = Instant::now();
        let t = self.stime();
        self.iface.poll(t, &mut self.wire, &mut self.sockets);
        self.pump_to_netstack(now);
        self.apply_interest();
        let busy = self.ns.has_pending_guest_frames() || !self.wire.from_guest.is_empty();
        self.poll_fds(if busy { 0 } else { wait_ms });
        let now = Instant::now();
        if self.ns.next_deadline().is_some_and(|d| d <= now) {
            self.ns.on_timer(now);
        }
        self.pump_to_guest(now);
        self.apply_interest();
        let t = self.stime();
        self.iface.poll(t, &mut self.wire, &mut self.sockets);
        self.pump_to_netstack(Instant::now());
    }

    /// Steps until `done` is true, at most `max_steps` steps or `timeout`. Returns
    /// whether `done` became true.
    pub fn run_until(
        &mut self,
        max_steps: usize,
        timeout: Duration,
        mut done: impl FnMut(&mut Harness) -> bool,
    ) -> bool {
        let until = Instant::now() + timeout;
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            self.step(1);
        }
        done(self)
    }

    /// Hands one frame to the netstack as if the guest had sent it (bypassing smoltcp and
    /// the fault hook), e.g. a frame from a [`FrameForge`].
    pub fn inject(&mut self, frame: &[u8]) {
        self.frames.0 += 1;
        self.ns
            .handle_guest_frame(&[IoSlice::new(frame)], TxMeta::default(), Instant::now());
    }

    /// A [`FrameForge`] for this harness's guest.
    pub fn forge(&self) -> FrameForge {
        FrameForge::new(self.ns.config(), self.ns.ipv4_addresses().0)
    }

    fn pump_to_netstack(&mut self, now: Instant) {
        while let Some(f) = self.wire.from_guest.pop_front() {
            let verdict = match self.fault.as_mut() {
                Some(hook) => hook(&f),
                None => Fault::Pass,
            };
            match verdict {
                Fault::Drop => continue,
                Fault::Hold if self.held.is_none() => {
                    self.held = Some(f);
                    continue;
                }
                _ => {}
            }
            self.frames.0 += 1;
            self.ns
                .handle_guest_frame(&[IoSlice::new(&f)], TxMeta::default(), now);
            if let Some(h) = self.held.take() {
                self.frames.0 += 1;
                self.ns
                    .handle_guest_frame(&[IoSlice::new(&h)], TxMeta::default(), now);
            }
        }
    }

    fn pump_to_guest(&mut self, now: Instant) {
        // Bounded: the guest's own queue limits how much one step delivers.
        for _ in 0..4096 {
            let mut bufs = [IoSliceMut::new(&mut self.rx[..])];
            let Some((n, _meta)) = self.ns.next_guest_frame(&mut bufs, now) else {
                break;
            };
            self.frames.1 += 1;
            if let Some(obs) = self.observe.as_mut() {
                obs(&self.rx[..n]);
            }
            if let Some(hook) = self.fault_to_guest.as_mut() {
                if hook(&self.rx[..n]) == Fault::Drop {
                    continue;
                }
            }
            self.wire.to_guest.push_back(self.rx[..n].to_vec());
        }
    }

    fn apply_interest(&mut self) {
        self.fds.apply(self.ns.take_interest_changes());
    }

    fn poll_fds(&mut self, wait_ms: i32) {
        let (tokens, mut pfds) = self.fds.pollfds();
        if pfds.is_empty() {
            if wait_ms > 0 {
                std::thread::sleep(Duration::from_millis(wait_ms as u64));
            }
            return;
        }
        if crate::poll(&mut pfds, wait_ms).unwrap_or(0) == 0 {
            return;
        }
        let now = Instant::now();
        for (t, p) in tokens.iter().zip(&pfds) {
            if p.revents == 0 || self.deaf_to_fds {
                continue;
            }
            let err = p.revents & (libc::POLLERR | libc::POLLHUP) != 0;
            let r = p.revents & libc::POLLIN != 0 || err;
            let w = p.revents & libc::POLLOUT != 0 || (err && p.events & libc::POLLOUT != 0);
            self.ns.on_fd_ready(*t, r, w, now);
            // The flow may have changed its interest; later tokens are still valid.
        }
        self.apply_interest();
    }
}
