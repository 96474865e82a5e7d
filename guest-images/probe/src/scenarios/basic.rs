//! The scenarios that need no network: `hello`, `exit:N`, `spin:N`,
//! `cpl0spin:N`.

use alloc::format;

use super::{usage_error, Context, Outcome};
use crate::clock::rdtsc;
use crate::cmdline::parse_u64;

/// `hello`: the runtime came up; report the clock.
pub fn hello(ctx: &Context<'_>) -> Outcome {
    let (heap_start, heap_end) = crate::heap::bounds();
    let json = ctx
        .json("hello", true)
        .u64("start_info_version", u64::from(ctx.start_info_version))
        .u64("heap_bytes", (heap_end - heap_start) as u64);
    Outcome { json, status: 0 }
}

/// `exit:N`: exit with status N.
pub fn exit_with(ctx: &Context<'_>, arg: Option<&str>) -> Outcome {
    match arg.and_then(parse_u64).and_then(|v| u32::try_from(v).ok()) {
        Some(status) => Outcome {
            json: ctx.json("exit", true).u64("status", u64::from(status)),
            status,
        },
        None => usage_error(
            ctx,
            "exit",
            format!("exit needs a 32-bit status, as exit:N; got {arg:?}"),
        ),
    }
}

/// `spin:N` / `cpl0spin:N`: N turns of a `dec; jnz` loop at CPL3 or CPL0.
pub fn spin(ctx: &Context<'_>, arg: Option<&str>, cpl0: bool) -> Outcome {
    let name = if cpl0 { "cpl0spin" } else { "spin" };
    let Some(iterations) = arg.and_then(parse_u64) else {
        return usage_error(
            ctx,
            name,
            format!("{name} needs an iteration count, as {name}:N; got {arg:?}"),
        );
    };
    let start = rdtsc();
    if cpl0 {
        #[cfg(not(test))]
        crate::idt::cpl0_spin(iterations);
    } else {
        cpl3_spin(iterations);
    }
    let cycles = rdtsc() - start;
    let json = ctx
        .json(name, true)
        .u64("iterations", iterations)
        .u64("cycles", cycles)
        .u64("ns", ctx.clock.ticks_to_ns(cycles));
    Outcome { json, status: 0 }
}

/// `idle`: halt the vCPU until the VM is stopped (no interrupt source is set up, so every
/// wake-up — the VMM's periodic kick — halts again). For measuring what an idle VM costs
/// the host; never returns.
pub fn idle(ctx: &Context<'_>) -> Outcome {
    crate::println!("probe: idle (halting until the VM is stopped)");
    #[cfg(not(test))]
    {
        let _ = ctx;
        loop {
            crate::idt::cpl0_idle();
        }
    }
    #[cfg(test)]
    Outcome {
        json: ctx.json("idle", true),
        status: 0,
    }
}

/// `fault:KIND`: crash on purpose, to test crash reporting. `ud` (#UD),
/// `gp` (`hlt` at CPL3), `pf` (read the first byte above the mapped 4 GiB) end in the CPL0
/// reporter (status 0x71); `panic` ends in the panic handler (0x70).
pub fn fault(ctx: &Context<'_>, arg: Option<&str>) -> Outcome {
    crate::println!("probe: fault:{} requested", arg.unwrap_or(""));
    match arg {
        #[cfg(not(test))]
        Some("ud") => {
            // SAFETY: deliberately raises #UD (rax is not the cpl0spin magic);
            // the exception handler ends the VM.
            unsafe { core::arch::asm!("xor eax, eax", "ud2", out("rax") _) };
        }
        #[cfg(not(test))]
        Some("gp") => {
            // SAFETY: hlt at CPL3 raises #GP; the handler ends the VM.
            unsafe { core::arch::asm!("hlt") };
        }
        #[cfg(not(test))]
        Some("pf") => {
            // SAFETY: deliberately reads an unmapped address (only the low
            // 4 GiB are mapped) to raise #PF; the handler ends the VM.
            unsafe { core::ptr::read_volatile(0x1_0000_0000usize as *const u8) };
        }
        Some("panic") => panic!("fault:panic requested on the command line"),
        _ => {}
    }
    usage_error(
        ctx,
        "fault",
        format!("fault needs ud, gp, pf or panic, as fault:KIND; got {arg:?}"),
    )
}

/// The CPL3 twin of the CPL0 loop in `boot` (`exception_common`): the same
/// `dec; jnz` pair.
fn cpl3_spin(iterations: u64) {
    // SAFETY: a register-only loop; rcx is declared clobbered.
    unsafe {
        core::arch::asm!(
            "test rcx, rcx", "jz 3f", "2:", "dec rcx", "jnz 2b", "3:",
            inout("rcx") iterations => _,
            options(nomem, nostack)
        )
    };
}
