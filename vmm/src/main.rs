//! The `ringfence` command: `run` boots a guest and exits with its status; `doctor` says what
//! this host can do.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringfence::config::{parse_timeout, Console, VmConfig, DEFAULT_MEM_MIB};
use ringfence::exit::STATUS_VMM_ERROR;
use ringfence::{doctor, probe_image, Vm};

/// A minimal KVM microVM monitor for sandboxes.
#[derive(Parser)]
#[command(name = "ringfence", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest, print its serial console, and exit with the guest's status.
    ///
    /// The exit status is the value the guest wrote to the exit port (0xf4), or:
    /// 124 if --timeout expired, 125 if ringfence itself failed (bad input, KVM error),
    /// 126 if the guest crashed (triple fault, halt with interrupts off, kernel panic),
    /// 128+N on signal N. With --net user, SIGUSR1 turns the guest's network off (live flows
    /// cut) and SIGUSR2 back on.
    ///
    /// Examples:
    ///   ringfence run                                   # the built probe guest, "hello"
    ///   ringfence run -- probe.scenario=spin:100000000  # probe with a scenario
    ///   ringfence run --kernel vmlinux --initrd initrd.cpio.gz --cmdline "console=ttyS0" --mem 256 --vcpus 2
    ///   ringfence run --kernel vmlinux --drive path=rootfs.ext4,root --cmdline "console=ttyS0"
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
    /// Serve Firecracker's REST API (the subset orchestrators such as Kata Containers call)
    /// on a Unix socket; the VM starts on `PUT /actions {"action_type": "InstanceStart"}` and
    /// the process exits with the guest's status. `ringfence --api-sock PATH` (Firecracker's
    /// own spelling) means the same, so ringfence can stand in for a `firecracker` binary.
    ///
    /// Examples:
    ///   ringfence api --api-sock /run/vm1.sock
    ///   ringfence api --config-file vm.json --no-api      # Firecracker's full JSON config
    #[command(verbatim_doc_comment)]
    Api(ApiArgs),
    /// Check /dev/kvm, io_uring, tun, namespaces, and measure whether guest kernels run at
    /// full speed on this host.
    Doctor {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Skip the guest CPU speed measurement (about a second).
        #[arg(long)]
        no_measure: bool,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// The Unix socket to serve the API on (created; a stale one is replaced, a live one
    /// refused).
    #[arg(
        long = "api-sock",
        visible_alias = "socket",
        value_name = "PATH",
        required_unless_present = "no_api"
    )]
    api_sock: Option<PathBuf>,
    /// Firecracker's full VM configuration (JSON: boot-source, machine-config,
    /// network-interfaces, logger, metrics, and ringfence's network-policy); the VM starts at
    /// once.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    no_api: bool,
    /// The instance id `GET /` reports.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Per-thread seccomp filters of the VM: on (default) or off.
    #[arg(long, value_name = "on|off", default_value = "on")]
    seccomp: ringfence::sandbox::SeccompMode,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Boot the Linux guest image (`cargo xtask image`) and run ARGS in it as a command; exit
    /// with its status. Needs a host where guest kernels run at full speed (`ringfence doctor`).
    #[arg(long, conflicts_with = "kernel")]
    linux: bool,
    /// Kernel to boot: a PVH ELF (vmlinux, the probe guest) or a bzImage. Default: the probe
    /// guest built by `cargo xtask` (or $RINGFENCE_PROBE).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING", default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MEM_MIB)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u32,
    /// Write the guest's serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Stop the guest after SECS seconds (exit status 124).
    #[arg(long, value_name = "SECS")]
    timeout: Option<String>,
    /// Guest network: `user` (userspace netstack, no root), `tap:IFNAME` (kernel tap,
    /// created if missing), or `none`.
    #[arg(long, value_name = "user|tap:IF|none", default_value = "user")]
    net: ringfence::net::NetBackendSpec,
    /// Publish a guest port on the host: [BIND:]HOSTPORT:GUESTPORT[/udp] (bind default
    /// 127.0.0.1; repeatable; --net user only).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<ringfence::net_user::PublishSpec>,
    /// Network policy preset: public-only (default), none, allow-all, non-local.
    #[arg(long, value_name = "PRESET")]
    net_preset: Option<String>,
    /// A policy rule, evaluated before the preset's, first match wins (repeatable), e.g.
    /// allow@public:tcp:443, deny@metadata, allow@10.0.0.0/8:tcp:8000-9000,
    /// allow@.example.com:tcp,udp:443, deny@ingress:*.
    #[arg(long, value_name = "RULE")]
    net_rule: Vec<String>,
    /// What happens to egress flows no rule matches: allow or deny.
    #[arg(long, value_name = "allow|deny")]
    net_default_egress: Option<String>,
    /// What happens to ingress flows (published ports) no rule matches: allow or deny.
    #[arg(long, value_name = "allow|deny")]
    net_default_ingress: Option<String>,
    /// Deny this domain (example.com) or suffix (.example.com) before every allow rule
    /// (repeatable).
    #[arg(long, value_name = "DOMAIN")]
    net_deny_domain: Vec<String>,
    /// Read the policy from a JSON or TOML file (replaces the preset).
    #[arg(long, value_name = "FILE")]
    net_config: Option<PathBuf>,
    /// IPv4 pool the guest's /30 comes from.
    #[arg(long, value_name = "CIDR", value_parser = ringfence::net_user::parse_ipv4_pool)]
    ipv4_pool: Option<(std::net::Ipv4Addr, u8)>,
    /// IPv6 pool the guest's /64 comes from.
    #[arg(long, value_name = "CIDR", value_parser = ringfence::net_user::parse_ipv6_pool)]
    ipv6_pool: Option<(std::net::Ipv6Addr, u8)>,
    /// Upstream DNS resolver for the guest's queries (repeatable; default /etc/resolv.conf).
    #[arg(long, value_name = "IP[:PORT]", value_parser = ringfence::net_user::parse_dns)]
    dns: Vec<std::net::SocketAddr>,
    /// Link MTU of `--net user`, announced by virtio (VIRTIO_NET_F_MTU), DHCP and router
    /// advertisements (1280..=65520; default 65520: large frames cost one host syscall per
    /// 64 KiB instead of per 1.5 KiB).
    #[arg(long, value_name = "BYTES", value_parser = ringfence::net_user::parse_mtu)]
    mtu: Option<u16>,
    /// TCP ports on which the guest's TLS ClientHello is read before the host connection
    /// opens, and its server name (SNI) judged by the same rules as DNS names: a name the
    /// policy denies gets a RST even when the address is allowed. No interception: allowed
    /// bytes go through unchanged. Bytes that are not a TLS ClientHello (within 16 KiB and
    /// 2 s) are refused. Comma-separated; default 443; `none` turns it off.
    #[arg(long, value_name = "LIST")]
    tls_ports: Option<ringfence::net_user::TlsPorts>,
    /// On --tls-ports, also refuse a ClientHello that names no server (by default such a
    /// connection is judged by its address alone).
    #[arg(long)]
    tls_require_sni: bool,
    #[command(flatten)]
    intercept: ringfence::tls_intercept::InterceptArgs,
    /// Most simultaneous TCP connections of the guest (default 256).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds a guest UDP (or ICMP echo) flow may stay idle before it is closed and its
    /// host socket freed (default 180).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    udp_idle_timeout: Option<u64>,
    /// A virtio-blk disk backed by a raw image file (repeatable, at most 16; the guest sees
    /// them as /dev/vda, /dev/vdb, ... in the order given). `id=` names it (the serial the
    /// guest reads; default drive0, drive1, ...), `ro` attaches it read-only, `root` makes it
    /// the guest's root filesystem (adds root=/dev/vdX rw, or ro, to the command line). The
    /// path cannot contain commas.
    #[arg(long = "drive", value_name = "path=FILE[,id=ID][,ro][,root]")]
    drive: Vec<ringfence::block::DriveArg>,
    /// Record every frame the guest sends and receives into FILE (pcap).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// With --pcap: keep only the first N bytes of each frame (e.g. 128 for headers; cheaper
    /// on bulk transfers). Default: whole frames.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=262144))]
    pcap_snaplen: Option<u32>,
    /// When the VM stops, print the network device's counters (frames, bytes, drops by
    /// reason, kicks, interrupts, event-loop iterations) as one JSON line on stderr.
    #[arg(long)]
    net_stats: bool,
    /// The guest's MAC address (default: random, locally administered).
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    mac: Option<[u8; 6]>,
    /// Nice value of the vCPU threads, 0..=19 (default 0). Raising it lets the VMM's device
    /// threads preempt a busy vCPU at once when cores are short, which is what a guest that
    /// busy-polls its rings needs; it also makes the guest yield to other host processes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=i64::from(ringfence::config::MAX_NICE)))]
    vcpu_nice: Option<u8>,
    /// Per-thread seccomp filters: on (default) or off, to debug a "disallowed syscall"
    /// report (see docs/security.md).
    #[arg(long, value_name = "on|off", default_value = "on")]
    seccomp: ringfence::sandbox::SeccompMode,
    /// A virtio-vsock device whose host side is Unix sockets, as Firecracker's: host programs
    /// connect to PATH and write "CONNECT <port>\n" to reach a guest listener (answered
    /// "OK <host_port>\n"); guest connections to CID 2 port P go to the socket PATH_P. The
    /// guest's CID is N (at least 3; default 3). PATH is created (a stale socket replaced, a
    /// live one refused) and removed when the VM ends.
    #[arg(long, value_name = "uds=PATH[,cid=N]")]
    vsock: Option<String>,
    /// Do not create the legacy i8254 PIT (the built-in probe guest never needs it; on nested
    /// hosts its teardown costs ~10 ms per VM).
    #[arg(long)]
    no_pit: bool,
    /// Extra kernel command-line words (for the probe guest: probe.scenario=... and friends),
    /// or with --linux the command to run in the guest.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

fn main() -> ExitCode {
    // First, before anything opens a descriptor: nothing inherited stays open.
    if let Err(e) = ringfence::sandbox::privileges::close_inherited_fds() {
        eprintln!("ringfence: error: cannot close inherited file descriptors: {e}");
        return ExitCode::from(STATUS_VMM_ERROR as u8);
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(text) = firecracker_version(&argv) {
        println!("{text}");
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse_from(firecracker_args(argv.into_iter()));
    match cli.command {
        Command::Api(args) => {
            let opts = ringfence::api::ApiOptions {
                socket: args.api_sock,
                config_file: args.config_file,
                id: args.id,
                seccomp: args.seccomp,
            };
            match ringfence::api::run(opts) {
                Ok(code) => ExitCode::from((code & 0xff) as u8),
                Err(msg) => {
                    eprintln!("ringfence: error: {msg}");
                    ExitCode::from(STATUS_VMM_ERROR as u8)
                }
            }
        }
        Command::Run(args) => match run(*args) {
            Ok(code) => ExitCode::from(code),
            Err(msg) => {
                eprintln!("ringfence: error: {msg}");
                ExitCode::from(STATUS_VMM_ERROR as u8)
            }
        },
        Command::Doctor { json, no_measure } => {
            let report = doctor::run(!no_measure);
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            if report.has_failures() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// `--version` of ringfence installed under a name starting with `firecracker` (as
/// orchestrators expect it): Firecracker's format, `Firecracker v<version>`, naming the
/// version of Firecracker's API ringfence serves, then ringfence's own version. Kata reads the
/// second word of the first line.
fn firecracker_version(argv: &[std::ffi::OsString]) -> Option<String> {
    let name = std::path::Path::new(argv.first()?).file_name()?.to_str()?;
    let asks = argv.len() == 2 && matches!(argv[1].to_str(), Some("--version" | "-V"));
    (name.starts_with("firecracker") && asks).then(|| {
        format!(
            "Firecracker v{api}\n\nringfence {own}, serving Firecracker's API {api}",
            api = ringfence::api::FIRECRACKER_API_VERSION,
            own = env!("CARGO_PKG_VERSION"),
        )
    })
}

/// Firecracker's command line (`--api-sock`, `--config-file`, `--no-api`, `--id` first)
/// means `ringfence api ...`, so orchestrators can call ringfence as they call firecracker.
fn firecracker_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = args.collect();
    let firecracker_style = args.get(1).and_then(|a| a.to_str()).is_some_and(|a| {
        ["--api-sock", "--config-file", "--no-api", "--id"]
            .iter()
            .any(|f| a == *f || a.starts_with(&format!("{f}=")))
    });
    if firecracker_style {
        args.insert(1, "api".into());
    }
    args
}

fn run(mut args: RunArgs) -> Result<u8, String> {
    let vsock = args
        .vsock
        .as_deref()
        .map(str::parse::<ringfence::vsock::VsockSettings>)
        .transpose()?;
    if args.linux {
        if args.args.is_empty() {
            return Err(
                "--linux needs a command after --, e.g. ringfence run --linux -- uname -a".into(),
            );
        }
        let report = doctor::run(true);
        if report.kernel_speed != doctor::GuestKernelSpeed::Native {
            return Err(format!(
                "--linux cannot run here: {} (see `ringfence doctor`)",
                report.linux_verdict()
            ));
        }
        let image = ringfence::linux_image::find()?;
        args.cmdline = ringfence::linux_image::cmdline(&args.args, &args.cmdline)?;
        args.args.clear();
        args.kernel = Some(image.kernel);
        // With its root on a drive the guest boots from that drive, not the image's initramfs.
        if !args.drive.iter().any(|d| d.root) {
            args.initrd = args.initrd.or(Some(image.initrd));
        }
    }
    let (kernel, is_probe) = match args.kernel {
        Some(k) => (k, false),
        None => match probe_image::find() {
            Ok(p) => (p, true),
            Err(looked) => {
                let places: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                return Err(format!(
                    "no --kernel given and the probe guest is not built (looked in: {}); run `cargo xtask demo` to build it, or pass --kernel FILE",
                    places.join(", ")
                ));
            }
        },
    };
    let mut cmdline = args.cmdline.clone();
    for word in &args.args {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(word);
    }
    if is_probe && !cmdline.contains("probe.scenario=") {
        cmdline.push_str(" probe.scenario=hello");
    }
    let vcpus = u8::try_from(args.vcpus).unwrap_or(u8::MAX);
    if u32::from(vcpus) != args.vcpus {
        return Err(format!(
            "--vcpus {} is more than {} (ringfence's limit)",
            args.vcpus,
            ringfence::config::MAX_VCPUS
        ));
    }
    let timeout = args
        .timeout
        .as_deref()
        .map(parse_timeout)
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut config = VmConfig::new(kernel);
    config.vsock = vsock;
    config.initrd = args.initrd;
    config.cmdline = cmdline.trim().to_string();
    config.mem_mib = args.mem;
    config.vcpus = vcpus;
    config.seccomp = args.seccomp;
    config.timeout = timeout;
    config.pass_tsc_khz = is_probe || config.cmdline.contains("probe.");
    config.legacy_pit = !(args.no_pit || is_probe);
    if let Some(n) = args.vcpu_nice {
        config.vcpu_nice = n;
    }
    config.console = match args.console {
        Some(p) => Console::File(p),
        None => Console::Stdout,
    };
    let uses_user_only = !args.publish.is_empty()
        || args.net_preset.is_some()
        || !args.net_rule.is_empty()
        || args.net_config.is_some()
        || !args.net_deny_domain.is_empty()
        || args.mtu.is_some()
        || args.tls_ports.is_some()
        || args.tls_require_sni
        || args.intercept.any();
    if uses_user_only && args.net != ringfence::net::NetBackendSpec::User {
        return Err("-p, --mtu, --tls-* and the --net-* policy flags need --net user (a tap bypasses the netstack; its policy is the tap namespace's firewall)".into());
    }
    config.drives = ringfence::block::settings_from_args(args.drive).map_err(|e| e.to_string())?;
    config.net = ringfence::net::NetSettings {
        backend: args.net,
        pcap: args.pcap,
        pcap_snaplen: args.pcap_snaplen,
        stats: args.net_stats,
        mac: args.mac,
        user: ringfence::net_user::UserNetSettings {
            ipv4_pool: args.ipv4_pool,
            ipv6_pool: args.ipv6_pool,
            dns: args.dns,
            publish: args.publish,
            max_connections: args.max_connections,
            udp_idle_timeout: args.udp_idle_timeout,
            mtu: args.mtu,
            tls_ports: args.tls_ports.map(|p| p.0),
            tls_require_sni: args.tls_require_sni,
            tls_intercept: args.intercept.settings()?,
            policy: ringfence::net_policy::PolicySettings {
                preset: args.net_preset,
                rules: args.net_rule,
                default_egress: args.net_default_egress,
                default_ingress: args.net_default_ingress,
                deny_domains: args.net_deny_domain,
                config_file: args.net_config,
                document: None,
            },
            ..Default::default()
        },
    };
    if config.net.stats && config.net.backend == ringfence::net::NetBackendSpec::None {
        return Err(
            "--net-stats needs a network device: add --net user or --net tap:IFNAME".into(),
        );
    }
    if config.net.pcap_snaplen.is_some() && config.net.pcap.is_none() {
        return Err("--pcap-snaplen needs --pcap FILE".into());
    }
    if config.net.pcap.is_some() && config.net.backend == ringfence::net::NetBackendSpec::None {
        return Err("--pcap needs a network device: add --net user or --net tap:IFNAME".into());
    }
    let user_net = config.net.backend == ringfence::net::NetBackendSpec::User;
    let seccomp = config.seccomp;
    let mut vm = Vm::new(config).route_stop_signals();
    if user_net {
        route_network_signals(vm.net_control(), seccomp)?;
    }
    let handle = vm.start().map_err(|e| e.to_string())?;
    // The VM runs on threads of its own, each under its filter; this one only waits now.
    ringfence::sandbox::filter_calling_thread(seccomp).map_err(|e| e.to_string())?;
    let exit = handle.wait();
    if exit.is_abnormal() {
        eprintln!("ringfence: {exit}");
    }
    Ok(exit.status() as u8)
}

/// SIGUSR1 turns the guest's network off (live flows are cut, new ones refused), SIGUSR2
/// turns it back on: an operator's switch, e.g. `kill -USR1 $(pidof ringfence)`.
///
/// The two signals are blocked in this thread before any other exists, so every thread
/// inherits the mask and only the waiting thread below ever takes them.
fn route_network_signals(
    control: ringfence::vm::NetControl,
    seccomp: ringfence::sandbox::SeccompMode,
) -> Result<(), String> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before use; the calls only
    // read and write it and the calling thread's signal mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err("cannot block SIGUSR1/SIGUSR2 for the network switch".into());
        }
        set
    };
    std::thread::Builder::new()
        .name("rf-net-switch".into())
        .spawn(move || {
            if let Err(e) = ringfence::sandbox::filter_calling_thread(seccomp) {
                eprintln!("ringfence: network switch: {e}; SIGUSR1/SIGUSR2 are ignored");
                return;
            }
            network_switch_loop(&set, &control);
        })
        .map_err(|e| format!("cannot start the network-switch thread: {e}"))?;
    Ok(())
}

/// Waits for SIGUSR1/SIGUSR2 (blocked in `set`) and switches the network; never returns
/// unless sigwait fails.
fn network_switch_loop(set: &libc::sigset_t, control: &ringfence::vm::NetControl) {
    loop {
        let mut sig = 0;
        // SAFETY: `set` is a valid, initialised signal set and `sig` a valid out pointer.
        if unsafe { libc::sigwait(set, &mut sig) } != 0 {
            return;
        }
        let on = sig == libc::SIGUSR2;
        match control.set_network_enabled(on) {
            Ok(()) if on => eprintln!("ringfence: SIGUSR2: guest network on"),
            Ok(()) => eprintln!("ringfence: SIGUSR1: guest network off (flows cut)"),
            Err(e) => eprintln!("ringfence: network switch: {e}"),
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || format!("bad MAC {text:?}: expected six hex bytes like 02:00:00:00:00:01");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(parts) {
        *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!(
            "bad MAC {text:?}: a multicast address cannot be a NIC's"
        ));
    }
    Ok(mac)
}
