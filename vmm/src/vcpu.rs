//! vCPU threads: each owns one `VcpuFd` and runs `KVM_RUN` until the VM stops.
//!
//! Port and MMIO exits go to the shared [`IoBus`]; a stop (exit port, reset, triple fault, error)
//! is recorded once in [`VmShared`] and wakes the main thread. The main thread stops vCPUs by
//! setting the stop flag and sending the kick signal until each thread has left `KVM_RUN`; the
//! same kick, sent periodically, lets a vCPU notice that it halted with interrupts off (with an
//! in-kernel LAPIC, such a HLT never exits to userspace on its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{KVM_MP_STATE_HALTED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::exit::VmExit;
use crate::io::{IoAction, IoBus};

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// State shared by the vCPU threads and the main thread.
pub struct VmShared {
    exit: Mutex<Option<VmExit>>,
    stop: AtomicBool,
    /// Written when a vCPU records an exit.
    pub exit_evt: EventFd,
}

impl VmShared {
    /// Fresh state with an eventfd to wake the main thread.
    pub fn new() -> std::io::Result<Self> {
        Ok(VmShared {
            exit: Mutex::new(None),
            stop: AtomicBool::new(false),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` (the first one wins) and asks every vCPU to stop.
    pub fn request_stop(&self, reason: VmExit) {
        if let Ok(mut slot) = self.exit.lock() {
            if slot.is_none() {
                *slot = Some(reason);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.exit_evt.write(1);
    }

    /// Whether the VM is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The recorded exit, if any.
    pub fn exit(&self) -> Option<VmExit> {
        self.exit.lock().ok().and_then(|s| s.clone())
    }
}

/// Starts vCPU `index` on its own thread, at nice value `nice` (see
/// [`crate::config::VmConfig::vcpu_nice`]), after running `sandbox` (its seccomp filter).
pub fn spawn(
    index: u8,
    vcpu: VcpuFd,
    bus: Arc<IoBus>,
    shared: Arc<VmShared>,
    nice: u8,
    sandbox: crate::sandbox::ThreadStart,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            if nice > 0 {
                if let Err(e) = set_thread_nice(nice) {
                    eprintln!("ringfence: warning: vCPU {index} stays at nice 0: {e}");
                }
            }
            if let Err(e) = sandbox() {
                shared.request_stop(VmExit::Internal(e.to_string()));
                return;
            }
            run(index, vcpu, &bus, &shared)
        })
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
fn set_thread_nice(nice: u8) -> std::io::Result<()> {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority only reads its integer arguments; PRIO_PROCESS with a thread id
    // changes that one thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, i32::from(nice)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn run(index: u8, mut vcpu: VcpuFd, bus: &IoBus, shared: &VmShared) {
    while !shared.stopping() {
        let action = match vcpu.run() {
            Ok(exit) => handle_exit(index, exit, bus),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                check_dead_halt(index, &vcpu)
            }
            Err(e) => IoAction::Stop(VmExit::Internal(format!("KVM_RUN on vCPU {index}: {e}"))),
        };
        if let IoAction::Stop(reason) = action {
            if let VmExit::TripleFault { vcpu: v, rip: None } = reason {
                let rip = vcpu.get_regs().ok().map(|r| r.rip);
                shared.request_stop(VmExit::TripleFault { vcpu: v, rip });
            } else {
                shared.request_stop(reason);
            }
            break;
        }
    }
}

fn handle_exit(index: u8, exit: VcpuExit<'_>, bus: &IoBus) -> IoAction {
    match exit {
        VcpuExit::IoOut(port, data) => bus.pio_write(port, data),
        VcpuExit::IoIn(port, data) => {
            bus.pio_read(port, data);
            IoAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            bus.mmio_read(addr, data);
            IoAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            bus.mmio_write(addr, data);
            IoAction::Continue
        }
        VcpuExit::Shutdown => IoAction::Stop(VmExit::TripleFault {
            vcpu: index,
            rip: None,
        }),
        VcpuExit::SystemEvent(kind, _) => IoAction::Stop(match kind {
            KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
            KVM_SYSTEM_EVENT_CRASH => VmExit::TripleFault {
                vcpu: index,
                rip: None,
            },
            _ => VmExit::PowerOff,
        }),
        VcpuExit::Hlt => IoAction::Stop(VmExit::DeadHalt {
            vcpu: index,
            rip: 0,
        }),
        VcpuExit::FailEntry(reason, cpu) => IoAction::Stop(VmExit::Internal(format!(
            "KVM could not enter vCPU {cpu} (hardware entry failure reason {reason:#x})"
        ))),
        VcpuExit::InternalError => IoAction::Stop(VmExit::Internal(format!(
            "KVM internal error on vCPU {index} (often an instruction KVM cannot emulate)"
        ))),
        other => IoAction::Stop(VmExit::Internal(format!(
            "unexpected exit on vCPU {index}: {other:?}"
        ))),
    }
}

/// After a kick: a vCPU halted with interrupts off can never wake, so report it.
fn check_dead_halt(index: u8, vcpu: &VcpuFd) -> IoAction {
    let halted = vcpu
        .get_mp_state()
        .map(|s| s.mp_state == KVM_MP_STATE_HALTED)
        .unwrap_or(false);
    if !halted {
        return IoAction::Continue;
    }
    match vcpu.get_regs() {
        Ok(regs) if regs.rflags & RFLAGS_IF == 0 => IoAction::Stop(VmExit::DeadHalt {
            vcpu: index,
            rip: regs.rip,
        }),
        _ => IoAction::Continue,
    }
}
