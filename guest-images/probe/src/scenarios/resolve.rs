//! `resolve probe.name=NAME`: one DNS lookup (A, then AAAA).
//! Exit 0 resolved, 1 NXDOMAIN/refused/failed, 2 timeout.

use alloc::string::String;

use super::net_common::{bring_up, failure, ip_strings, json, DEFAULT_TIMEOUT_MS};
use super::{Context, Outcome};
use crate::clock::rdtsc;
use crate::net::NetError;

/// Runs the scenario.
pub fn resolve(ctx: &Context<'_>) -> Outcome {
    let Some(name) = ctx.cmdline.get("probe.name") else {
        let err = NetError::BadArg {
            key: "probe.name",
            value: String::new(),
            expected: "a host name",
        };
        return failure(ctx, "resolve", None, &err);
    };
    let mut run = match bring_up(ctx, DEFAULT_TIMEOUT_MS) {
        Ok(r) => r,
        Err(e) => return failure(ctx, "resolve", None, &e),
    };
    let t0 = rdtsc();
    match run.stack.resolve(name, run.timeout_ms) {
        Ok(addrs) => {
            let strings = ip_strings(&addrs);
            let json = json(ctx, "resolve", true, Some(&run))
                .str("name", name)
                .str_array("addresses", strings.iter().map(String::as_str))
                .f64(
                    "resolve_us",
                    ctx.clock.ticks_to_ns(rdtsc() - t0) as f64 / 1000.0,
                    1,
                );
            Outcome { json, status: 0 }
        }
        Err(e) => {
            let mut o = failure(ctx, "resolve", Some(&run), &e);
            o.json = o.json.str("name", name);
            o
        }
    }
}
