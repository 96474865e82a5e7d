//! Policy decision cost: compiled evaluator vs the linear reference at 10, 100, 1 000 and
//! 10 000 rules, for IPv4, IPv6 and domain-attributed flows and for DNS queries. Rule sets are
//! a deterministic, realistic mix: a short head of group rules (`deny@metadata`,
//! `deny@link-local`, DNS to the host), a long body of specific rules (CIDRs of many lengths,
//! single IPs, domains and suffixes, with port ranges and protocol sets, mostly egress, as in
//! allow/block lists), and a tail `allow@public:tcp:443`. Queries hit a random body rule's
//! destination half of the time and an arbitrary address the other half.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use policy::{
    Action, Destination, DomainName, FlowQuery, IpCidr, LinearPolicy, Policy, PolicyContext,
    PortRange, Protocol, ProtocolSet, Rule, RuleDirection,
};

/// Measures the benchmark thread's CPU time instead of wall time: the development machines
/// are shared by several builds at once, and preemption would otherwise be counted as
/// decision time.
struct ThreadCpuTime;

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is supported by every Linux kernel we run on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

static WALL_TIME: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu_now().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        WALL_TIME.formatter()
    }
}

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const QUERIES: usize = 1024;

/// A small deterministic generator (SplitMix64), so runs compare like with like.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn name(rng: &mut Rng) -> String {
    format!(
        "svc{}.team{}.{}",
        rng.below(50),
        rng.below(40),
        ["example.com", "example.org", "example.net", "corp.example"][rng.below(4) as usize]
    )
}

fn ports(rng: &mut Rng) -> Vec<PortRange> {
    match rng.below(10) {
        0..=4 => Vec::new(),
        5..=7 => {
            let p = [22, 53, 80, 443, 5432, 6379, 8080, 8443][rng.below(8) as usize];
            vec![PortRange::new(p, p).unwrap()]
        }
        _ => {
            let start = 1 + rng.below(60_000) as u16;
            vec![PortRange::new(start, start + rng.below(2_000) as u16).unwrap()]
        }
    }
}

fn rule(rng: &mut Rng) -> Rule {
    let dest = match rng.below(100) {
        0..=34 => {
            let addr = Ipv4Addr::from(rng.next() as u32);
            let len = [8, 12, 16, 20, 24, 24, 28, 32][rng.below(8) as usize];
            Destination::Cidr(IpCidr::new(IpAddr::V4(addr), len).unwrap())
        }
        35..=44 => Destination::Cidr(IpCidr::host(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))),
        45..=59 => {
            let addr = Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | u128::from(rng.next()) << 32 | u128::from(rng.below(16)),
            );
            let len = [40, 48, 56, 64, 64, 128][rng.below(6) as usize];
            Destination::Cidr(IpCidr::new(IpAddr::V6(addr), len).unwrap())
        }
        60..=79 => Destination::Domain(DomainName::parse(&name(rng)).unwrap()),
        _ => {
            let n = name(rng);
            let parent = n.split_once('.').map(|(_, p)| p.to_string()).unwrap_or(n);
            Destination::Suffix(DomainName::parse(&parent).unwrap())
        }
    };
    let direction = match rng.below(10) {
        0 => RuleDirection::Ingress,
        1 => RuleDirection::Any,
        _ => RuleDirection::Egress,
    };
    let protocols = match rng.below(5) {
        0 => ProtocolSet::ALL,
        1 => ProtocolSet::of(&[Protocol::Udp]),
        2 => ProtocolSet::of(&[Protocol::Tcp, Protocol::Udp]),
        _ => ProtocolSet::of(&[Protocol::Tcp]),
    };
    let action = if rng.chance(70) {
        Action::Allow
    } else {
        Action::Deny
    };
    Rule::new(action, direction, dest, protocols, ports(rng)).unwrap()
}

fn policy(n: usize) -> Policy {
    let mut rng = Rng(n as u64);
    let mut rules =
        policy::parse_rules("deny@metadata,deny@link-local,allow@host:tcp,udp:53,deny@egress:host")
            .unwrap();
    while rules.len() < n - 1 {
        rules.push(rule(&mut rng));
    }
    rules.extend(policy::parse_rules("allow@public:tcp:443").unwrap());
    Policy::new(Action::Deny, Action::Allow, rules)
}

/// An address inside the destination of a random CIDR rule of the wanted family, or a random
/// address half of the time.
fn addresses(p: &Policy, v6: bool, rng: &mut Rng) -> Vec<IpAddr> {
    let cidrs: Vec<IpCidr> = p
        .rules
        .iter()
        .filter_map(|r| match r.destination() {
            Destination::Cidr(c) if c.addr().is_ipv6() == v6 => Some(*c),
            _ => None,
        })
        .collect();
    (0..QUERIES)
        .map(|_| {
            let noise = u128::from(rng.next()) << 64 | u128::from(rng.next());
            let hit = !cidrs.is_empty() && rng.chance(50);
            if v6 {
                let base = if hit {
                    cidrs[rng.below(cidrs.len() as u64) as usize]
                } else {
                    IpCidr::new(IpAddr::V6(Ipv6Addr::from(0x2001_0db8u128 << 96)), 32).unwrap()
                };
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(base.len()))
                    .unwrap_or(0);
                let IpAddr::V6(a) = base.addr() else {
                    unreachable!()
                };
                IpAddr::V6(Ipv6Addr::from((u128::from(a) & mask) | (noise & !mask)))
            } else {
                let base = if hit {
                    cidrs[rng.below(cidrs.len() as u64) as usize]
                } else {
                    IpCidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).unwrap()
                };
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(base.len()))
                    .unwrap_or(0);
                let IpAddr::V4(a) = base.addr() else {
                    unreachable!()
                };
                IpAddr::V4(Ipv4Addr::from(
                    (u32::from(a) & mask) | (noise as u32 & !mask),
                ))
            }
        })
        .collect()
}

fn protocol(rng: &mut Rng) -> (Protocol, u16) {
    let port = [22, 53, 80, 443, 5432, 8080, 30_000, 61_000][rng.below(8) as usize];
    (
        if rng.chance(75) {
            Protocol::Tcp
        } else {
            Protocol::Udp
        },
        port,
    )
}

fn bench_policy(c: &mut Criterion<ThreadCpuTime>) {
    let ctx = PolicyContext {
        host_addrs: vec!["172.16.0.1".parse().unwrap(), "fd42::1".parse().unwrap()],
    };
    for family in ["v4", "v6", "domain"] {
        let mut group = c.benchmark_group(format!("policy_{family}"));
        group.throughput(Throughput::Elements(1));
        for n in SIZES {
            let p = policy(n);
            let started = Instant::now();
            let compiled = p.compile(&ctx).unwrap();
            if family == "v4" {
                eprintln!(
                    "rules={n} compile={:?} stats={:?}",
                    started.elapsed(),
                    compiled.stats()
                );
            }
            let linear = LinearPolicy::new(&p, &ctx);
            let mut rng = Rng(0xfeed ^ n as u64);
            let names: Vec<String> = (0..QUERIES).map(|_| name(&mut rng)).collect();
            let addrs = addresses(&p, family == "v6", &mut rng);
            let queries: Vec<FlowQuery<'_>> = (0..QUERIES)
                .map(|i| {
                    let (protocol, port) = protocol(&mut rng);
                    FlowQuery {
                        direction: policy::Direction::Egress,
                        dst: addrs[i],
                        domain: (family == "domain").then_some(names[i].as_str()),
                        protocol,
                        port,
                    }
                })
                .collect();
            let mut i = 0usize;
            group.bench_with_input(BenchmarkId::new("compiled", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % QUERIES;
                    black_box(compiled.decide(black_box(&queries[i])))
                })
            });
            let mut i = 0usize;
            group.bench_with_input(BenchmarkId::new("linear", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % QUERIES;
                    black_box(linear.decide(black_box(&queries[i])))
                })
            });
        }
        group.finish();
    }
    let mut group = c.benchmark_group("policy_dns_query");
    for n in SIZES {
        let p = policy(n);
        let compiled = p.compile(&ctx).unwrap();
        let linear = LinearPolicy::new(&p, &ctx);
        let mut rng = Rng(0xd115 ^ n as u64);
        let names: Vec<String> = (0..QUERIES).map(|_| name(&mut rng)).collect();
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("compiled", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % QUERIES;
                black_box(compiled.decide_dns_query(black_box(&names[i])))
            })
        });
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("linear", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % QUERIES;
                black_box(linear.decide_dns_query(black_box(&names[i])))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench_policy
}
criterion_main!(benches);
