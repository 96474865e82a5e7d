//! Scenario selection: `probe.scenario=NAME[:ARG]` picks what the probe does
//! after the runtime is up. Every scenario yields one JSON line and an exit
//! status (0 = success); a missing, unknown or malformed scenario yields an
//! error line and status 2.

mod basic;
mod blk;
mod datagram;
mod flood;
mod net_common;
mod raw;
mod raw6;
mod raw_frame;
mod resolve;
mod tcp;
mod tcp_multi;
mod tls;

use alloc::format;
use alloc::string::String;

use crate::clock::Clock;
use crate::cmdline::Cmdline;
use crate::exit::STATUS_USAGE;
use crate::json::JsonLine;

/// What a scenario needs from the runtime.
pub struct Context<'a> {
    /// The kernel command line.
    pub cmdline: Cmdline<'a>,
    /// The calibrated TSC.
    pub clock: Clock,
    /// TSC value printed on the ready line.
    pub ready_tsc: u64,
    /// `hvm_start_info.version`.
    pub start_info_version: u32,
}

impl Context<'_> {
    /// Starts a JSON line with the fields every scenario reports.
    pub fn json(&self, scenario: &str, ok: bool) -> JsonLine {
        JsonLine::new(scenario)
            .bool("ok", ok)
            .u64("tsc_khz", self.clock.tsc_khz)
            .str("tsc_source", self.clock.source.name())
            .u64("ready_tsc", self.ready_tsc)
    }
}

/// The result of a scenario: its JSON line and exit status.
pub struct Outcome {
    /// The result line (printed by the caller).
    pub json: JsonLine,
    /// The exit status.
    pub status: u32,
}

/// A scenario that could not run because its arguments were wrong.
pub fn usage_error(ctx: &Context<'_>, scenario: &str, error: String) -> Outcome {
    Outcome {
        json: ctx.json(scenario, false).str("error", &error),
        status: STATUS_USAGE,
    }
}

/// Runs the scenario named on the command line.
pub fn run(ctx: &Context<'_>) -> Outcome {
    let Some(spec) = ctx.cmdline.get("probe.scenario") else {
        return usage_error(
            ctx,
            "",
            String::from("no probe.scenario= on the command line; use e.g. probe.scenario=hello"),
        );
    };
    let (name, arg) = match spec.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (spec, None),
    };
    match name {
        "hello" => basic::hello(ctx),
        "blk" => blk::blk(ctx),
        "exit" => basic::exit_with(ctx, arg),
        "spin" => basic::spin(ctx, arg, false),
        "cpl0spin" => basic::spin(ctx, arg, true),
        "idle" => basic::idle(ctx),
        "fault" => basic::fault(ctx, arg),
        "ping" => datagram::ping(ctx),
        "udp-echo" => datagram::udp_echo(ctx),
        "tcp-send" => tcp::send(ctx),
        "tcp-recv" => tcp::recv(ctx),
        "tcp-rr" => tcp::rr(ctx),
        "connect" => tcp::connect_only(ctx),
        "serve" => tcp::serve(ctx),
        "resolve" => resolve::resolve(ctx),
        "tls-hello" => tls::hello(ctx),
        "raw" => raw::raw(ctx, arg),
        "raw6" => raw6::raw6(ctx, arg),
        "flood" => flood::flood(ctx, arg),
        _ => usage_error(
            ctx,
            name,
            format!(
                "unknown scenario {name:?}; known: hello, exit:N, spin:N, cpl0spin:N, idle, fault:KIND, ping, udp-echo, \
                 tcp-send, tcp-recv, tcp-rr, connect, serve, resolve, tls-hello, raw:CASE, raw6:CASE, flood:syn|udp, blk"
            ),
        ),
    }
}
