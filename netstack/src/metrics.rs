//! Plain counters of what the netstack did and why it dropped things.
//!
//! Owns no logic: the rest of the crate bumps fields, tests and the VMM read them.

/// Counters for one VM's netstack. Monotonic; never reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames received from the guest (any kind).
    pub guest_frames: u64,
    /// ARP frames from the guest.
    pub arp_frames: u64,
    /// DHCP messages from the guest.
    pub dhcp_frames: u64,
    /// ICMP/ICMPv6 (incl. NDP) frames from the guest.
    pub icmp_frames: u64,
    /// TCP segments from the guest.
    pub tcp_frames: u64,
    /// UDP datagrams from the guest (incl. DNS and DHCP).
    pub udp_frames: u64,
    /// DNS queries from the guest.
    pub dns_queries: u64,
    /// Frames delivered to the guest.
    pub frames_to_guest: u64,

    /// Dropped: shorter than its headers say, or a length field is inconsistent.
    pub drop_malformed: u64,
    /// Dropped: an ethertype / IP protocol / message type we do not handle.
    pub drop_unsupported: u64,
    /// Dropped: not addressed to us or from an address the guest does not own.
    pub drop_foreign: u64,
    /// Dropped: guest TCP segment outside the window we advertised (or after a hole on a
    /// DNS stream, which never queues).
    pub drop_out_of_window: u64,
    /// Dropped: guest payload the host socket did not accept (the guest retransmits).
    pub drop_host_busy: u64,
    /// Dropped: frame had more scatter segments than we send in one call.
    pub drop_too_fragmented: u64,
    /// Dropped: a datagram from the host did not fit the guest's RX buffers.
    pub drop_too_big: u64,
    /// Dropped: ICMP echo to a non-gateway destination with no ping or raw socket available.
    pub drop_icmp_no_socket: u64,
    /// Dropped: a DNS answer the gate refused (rebind protection).
    pub drop_dns_rebind: u64,
    /// Dropped: an upstream DNS answer that could not be read, so could not be judged
    /// (rebind protection fails closed).
    pub drop_dns_malformed: u64,
    /// Dropped: host socket error while sending (other than "would block").
    pub drop_host_error: u64,
    /// Dropped: a control frame for the guest (ARP/ICMP/DHCP/DNS answer, RST, ICMP error)
    /// because 4096 were already queued (a guest that asks faster than it reads).
    pub drop_ctrl_overflow: u64,

    /// Flows (TCP connections, UDP/ICMP flows) opened.
    pub flows_opened: u64,
    /// Flows refused by the flow gate (policy).
    pub flows_denied: u64,
    /// Flows refused because a limit was reached (flow table, TCP connections, published
    /// connections, echo flows). Logged through a count-based gate.
    pub flows_over_limit: u64,
    /// Guest SYNs refused because `max_half_open_tcp` connections were already half open
    /// (also counted in `flows_over_limit`).
    pub tcp_half_open_refused: u64,
    /// Most flows ever in the flow table at once (a high-water mark, not a counter).
    pub flows_peak: u64,
    /// Most guest TCP connections ever half open at once (a high-water mark).
    pub tcp_half_open_peak: u64,
    /// Flows closed (any reason).
    pub flows_closed: u64,
    /// TCP host connects that failed or timed out.
    pub connect_failures: u64,
    /// RSTs sent to the guest.
    pub rst_to_guest: u64,
    /// TCP segments retransmitted to the guest.
    pub retransmits: u64,
    /// Out-of-order guest TCP payload pieces copied into a connection's queue to wait
    /// for the hole before them.
    pub tcp_ooo_queued: u64,
    /// Out-of-order guest TCP segments dropped because the queue's bound (per connection
    /// or across connections) was reached; the guest retransmits them.
    pub tcp_ooo_dropped: u64,
    /// Queued out-of-order payload bytes written to host sockets once the hole filled.
    pub tcp_ooo_flushed: u64,
    /// Window updates re-sent because the guest stayed silent after a zero window
    /// reopened.
    pub tcp_window_update_resends: u64,
    /// Window probes sent to a guest whose window stayed closed with nothing in flight.
    pub tcp_window_probes: u64,
    /// Host sockets reported readable with nothing behind the bytes already in flight to
    /// the guest (a peek that would block). Up to two per stall are expected: the first
    /// raises `SO_RCVLOWAT`, the second parks the flow until the guest's ACK instead of
    /// polling the socket.
    pub tcp_readable_nothing_new: u64,
    /// Connections accepted on published ports.
    pub published_accepts: u64,
    /// ClientHellos read on TLS ports and judged by the policy.
    pub tls_hellos_judged: u64,
    /// Of those, ClientHellos that named no server (judged by address alone, or refused
    /// when a server name is required).
    pub tls_no_server_name: u64,
    /// TLS flows refused for their server name (or for naming none when one is required).
    /// Also counted in `flows_denied`.
    pub tls_server_name_denied: u64,
    /// TLS-port flows refused because the guest's first bytes were not a TLS handshake, the
    /// ClientHello was malformed, or the guest ended its stream before completing it.
    pub tls_hello_malformed: u64,
    /// TLS-port flows refused because the ClientHello needed more than 16 KiB.
    pub tls_hello_oversized: u64,
    /// TLS-port flows refused because the ClientHello was not complete in time.
    pub tls_hello_timeouts: u64,
    /// Allowed TLS flows handed to the interception proxy.
    pub tls_intercepted: u64,
    /// Allowed TLS flows the proxy did not want (a `bypass` name): spliced untouched.
    pub tls_spliced: u64,
    /// TLS flows reset because the proxy could not take them (no socket pair, proxy gone).
    pub tls_handoff_failures: u64,
    /// Guest UDP datagrams to an intercepted port refused so QUIC falls back to TLS.
    pub quic_blocked: u64,
    /// Flows reset and datagrams dropped because they carried a secret's placeholder outside
    /// the TLS proxy (plaintext).
    pub secret_plaintext_violations: u64,

    /// Payload bytes from the guest accepted by host sockets.
    pub bytes_guest_to_host: u64,
    /// Payload bytes delivered to the guest (retransmissions included).
    pub bytes_host_to_guest: u64,
}

impl NetMetrics {
    /// Every counter by name, in declaration order (for reports such as `--net-stats`).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("guest_frames", self.guest_frames),
            ("arp_frames", self.arp_frames),
            ("dhcp_frames", self.dhcp_frames),
            ("icmp_frames", self.icmp_frames),
            ("tcp_frames", self.tcp_frames),
            ("udp_frames", self.udp_frames),
            ("dns_queries", self.dns_queries),
            ("frames_to_guest", self.frames_to_guest),
            ("drop_malformed", self.drop_malformed),
            ("drop_unsupported", self.drop_unsupported),
            ("drop_foreign", self.drop_foreign),
            ("drop_out_of_window", self.drop_out_of_window),
            ("drop_host_busy", self.drop_host_busy),
            ("drop_too_fragmented", self.drop_too_fragmented),
            ("drop_too_big", self.drop_too_big),
            ("drop_icmp_no_socket", self.drop_icmp_no_socket),
            ("drop_dns_rebind", self.drop_dns_rebind),
            ("drop_dns_malformed", self.drop_dns_malformed),
            ("drop_host_error", self.drop_host_error),
            ("drop_ctrl_overflow", self.drop_ctrl_overflow),
            ("flows_opened", self.flows_opened),
            ("flows_denied", self.flows_denied),
            ("flows_over_limit", self.flows_over_limit),
            ("tcp_half_open_refused", self.tcp_half_open_refused),
            ("flows_peak", self.flows_peak),
            ("tcp_half_open_peak", self.tcp_half_open_peak),
            ("flows_closed", self.flows_closed),
            ("connect_failures", self.connect_failures),
            ("rst_to_guest", self.rst_to_guest),
            ("retransmits", self.retransmits),
            ("tcp_ooo_queued", self.tcp_ooo_queued),
            ("tcp_ooo_dropped", self.tcp_ooo_dropped),
            ("tcp_ooo_flushed", self.tcp_ooo_flushed),
            ("tcp_window_update_resends", self.tcp_window_update_resends),
            ("tcp_window_probes", self.tcp_window_probes),
            ("tcp_readable_nothing_new", self.tcp_readable_nothing_new),
            ("published_accepts", self.published_accepts),
            ("tls_hellos_judged", self.tls_hellos_judged),
            ("tls_no_server_name", self.tls_no_server_name),
            ("tls_server_name_denied", self.tls_server_name_denied),
            ("tls_hello_malformed", self.tls_hello_malformed),
            ("tls_hello_oversized", self.tls_hello_oversized),
            ("tls_hello_timeouts", self.tls_hello_timeouts),
            ("tls_intercepted", self.tls_intercepted),
            ("tls_spliced", self.tls_spliced),
            ("tls_handoff_failures", self.tls_handoff_failures),
            ("quic_blocked", self.quic_blocked),
            (
                "secret_plaintext_violations",
                self.secret_plaintext_violations,
            ),
            ("bytes_guest_to_host", self.bytes_guest_to_host),
            ("bytes_host_to_guest", self.bytes_host_to_guest),
        ]
    }
}
