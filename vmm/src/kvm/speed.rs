//! Guest CPU speed probe: runs the same counted loop at CPL0 and at CPL3 in a throwaway VM and
//! reports nanoseconds per iteration for each.
//!
//! On hardware-virtualization hosts both run at native speed. On nested paravirtual hosts like
//! our CI machines guest kernel mode is emulated (~1M instructions/s) while user mode is native,
//! so the CPL0 loop is hundreds of times slower: that is what tells `doctor` whether a Linux
//! guest can run at full speed here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::regs::{self, EntryMode};
use super::{KvmError, KvmHost};
use crate::signals;

/// Where the loop code goes.
const CODE_ADDR: u64 = 0x1000;
/// Memory of the throwaway VM.
const SPEED_VM_MEM: usize = 4 << 20;
/// Longest one measurement may run before it is abandoned.
const SPEED_LIMIT: Duration = Duration::from_secs(20);

/// The privilege level to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// Guest kernel mode.
    Kernel,
    /// Guest user mode.
    User,
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
pub struct LoopSpeed {
    /// Which ring ran the loop.
    pub ring: Ring,
    /// Iterations run.
    pub iterations: u64,
    /// Wall time of the whole `KVM_RUN`.
    pub elapsed: Duration,
}

impl LoopSpeed {
    /// Nanoseconds per loop iteration.
    pub fn ns_per_iteration(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.iterations.max(1) as f64
    }
}

/// `mov rcx, N; 1: dec rcx; jnz 1b; out 0xf4, al`
fn loop_code(iterations: u64) -> Vec<u8> {
    let mut code = vec![0x48, 0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0x48, 0xff, 0xc9, 0x75, 0xfb, 0xe6, 0xf4, 0xf4]);
    code
}

/// Runs `iterations` of a two-instruction loop at `ring` and times it.
pub fn measure(host: &KvmHost, ring: Ring, iterations: u64) -> Result<LoopSpeed, KvmError> {
    let vm = host.create_vm()?;
    vm.set_tss_address(crate::layout::KVM_TSS_ADDRESS)
        .map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SPEED_VM_MEM)])
        .map_err(|_| KvmError::GuestWrite("the speed-probe memory"))?;
    let region = mem
        .iter()
        .next()
        .ok_or(KvmError::GuestWrite("the speed-probe memory"))?;
    let host_addr = region
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .map_err(|_| KvmError::GuestWrite("the speed-probe memory"))?;
    let desc = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: SPEED_VM_MEM as u64,
        userspace_addr: host_addr as u64,
        flags: 0,
    };
    // SAFETY: `mem` is a live mapping that outlives the VM, which is dropped at the end of
    // this function before `mem`.
    unsafe { vm.set_user_memory_region(desc) }
        .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    mem.write_slice(&loop_code(iterations), GuestAddress(CODE_ADDR))
        .map_err(|_| KvmError::GuestWrite("the speed-probe code"))?;

    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&super::cpuid::for_vcpu(host, 0, 1)?)
        .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
    regs::set_entry_state(&vcpu, &mem, EntryMode::Linux64 { entry: CODE_ADDR })?;
    if ring == Ring::User {
        enter_user_mode(&vcpu)?;
    }

    signals::install_vcpu_kick_handler()
        .map_err(|e| KvmError::ioctl("installing the kick handler")(e.into()))?;
    let done = Arc::new(AtomicBool::new(false));
    // SAFETY: pthread_self() is always valid for the calling thread.
    let self_id = unsafe { libc::pthread_self() };
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::SeqCst) && start.elapsed() < SPEED_LIMIT {
                std::thread::park_timeout(Duration::from_millis(50));
            }
            if !done.load(Ordering::SeqCst) {
                // SAFETY: the measuring thread is blocked in KVM_RUN below and outlives this
                // watchdog (it joins us); the kick signal has a no-op handler installed.
                unsafe {
                    libc::pthread_kill(self_id, signals::vcpu_kick_signal());
                }
            }
        })
    };
    let start = Instant::now();
    let result = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0xf4, _)) => break Ok(start.elapsed()),
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::IoIn(..)) => continue,
            Ok(other) => {
                break Err(KvmError::ioctl("speed-probe run (unexpected exit)")(
                    kvm_ioctls::Error::new(match other {
                        VcpuExit::Shutdown => libc::EFAULT,
                        _ => libc::EIO,
                    }),
                ))
            }
            Err(e) if e.errno() == libc::EINTR => {
                vcpu.set_kvm_immediate_exit(0);
                break Err(KvmError::ioctl("speed-probe run (did not finish in time)")(
                    e,
                ));
            }
            Err(e) => break Err(KvmError::ioctl("KVM_RUN (speed probe)")(e)),
        }
    };
    done.store(true, Ordering::SeqCst);
    watchdog.thread().unpark();
    let _ = watchdog.join();
    Ok(LoopSpeed {
        ring,
        iterations,
        elapsed: result?,
    })
}

/// Drops the vCPU to CPL3 with IOPL=3 (so `out` still works) on the same flat segments.
fn enter_user_mode(vcpu: &kvm_ioctls::VcpuFd) -> Result<(), KvmError> {
    let mut sregs = vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    for seg in [
        &mut sregs.cs,
        &mut sregs.ss,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        seg.dpl = 3;
        seg.selector |= 3;
    }
    vcpu.set_sregs(&sregs)
        .map_err(KvmError::ioctl("KVM_SET_SREGS (user mode)"))?;
    let mut r = vcpu.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?;
    r.rflags = 0x3002;
    vcpu.set_regs(&r).map_err(KvmError::ioctl("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_code_branches_back_to_the_decrement() {
        let code = loop_code(5);
        assert_eq!(&code[..2], &[0x48, 0xb9]);
        assert_eq!(u64::from_le_bytes(code[2..10].try_into().unwrap()), 5);
        // jnz rel8 = -5 lands on `dec rcx` at offset 10.
        assert_eq!(code[13], 0x75);
        assert_eq!(15i64 + (code[14] as i8) as i64, 10);
    }
}
