//! seccomp-BPF allow-lists, one per thread kind, and the SIGSYS handler that turns a
//! violation into one clear line on stderr.
//!
//! Each thread installs its own filter when it starts ([`install`]); filters are built with
//! `seccompiler` from the lists below, which were derived by tracing every thread of the
//! KVM test suite (`strace -ff`, see docs/security.md). A syscall outside the list does not
//! run: the kernel raises SIGSYS (SECCOMP_RET_TRAP), and `on_sigsys` writes
//! `ringfence: seccomp: thread <kind> made disallowed syscall N; ...` and exits the whole
//! process with status 125, the status of every VMM failure. SIGSYS cannot be re-routed
//! afterwards: no thread may call `rt_sigaction` for it.
//!
//! This module never decides *when* a thread is filtered; `sandbox` does.

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::SandboxError;

/// The kinds of thread ringfence runs, each with its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The thread that built the VM and then waits for its end (`Vm::run`'s caller).
    Vmm,
    /// A vCPU thread: `KVM_RUN` and the port/MMIO exits it handles, including device
    /// activation.
    Vcpu,
    /// A device worker: the io_uring loop, the netstack and its host sockets.
    Worker,
    /// The thread that starts device workers (so they do not inherit a vCPU's filter).
    Launcher,
    /// `ringfence api`'s server thread: HTTP on the API socket, the files the calls name
    /// (checked, logged to, swapped in), never a VM start (the main thread does that).
    Api,
}

impl ThreadKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Worker,
        ThreadKind::Launcher,
        ThreadKind::Api,
    ];

    /// The name used in messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "worker",
            ThreadKind::Launcher => "launcher",
            ThreadKind::Api => "api",
        }
    }

    fn code(self) -> u8 {
        match self {
            ThreadKind::Vmm => 1,
            ThreadKind::Vcpu => 2,
            ThreadKind::Worker => 3,
            ThreadKind::Launcher => 4,
            ThreadKind::Api => 5,
        }
    }

    fn name_of_code(code: u8) -> &'static [u8] {
        match code {
            1 => b"vmm",
            2 => b"vcpu",
            3 => b"worker",
            4 => b"launcher",
            5 => b"api",
            _ => b"unknown",
        }
    }
}

thread_local! {
    /// The kind of the calling thread once it installed a filter (0: none). A const-initialised
    /// `Cell<u8>` has no destructor and no lazy initialisation, so the signal handler may read it.
    static KIND: Cell<u8> = const { Cell::new(0) };
}

/// Exit status of a process killed for a seccomp violation (the VMM-failure status).
pub const VIOLATION_STATUS: i32 = 125;

// ioctl request numbers (asm-generic/ioctl.h encoding: dir << 30 | size << 16 | type << 8 | nr).
const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xae;
/// `KVM_RUN`.
const KVM_RUN: u64 = ioc(0, KVMIO, 0x80, 0);
/// `KVM_GET_REGS` (struct kvm_regs, 144 bytes).
const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, 144);
/// `KVM_GET_MP_STATE` (struct kvm_mp_state, 4 bytes).
const KVM_GET_MP_STATE: u64 = ioc(IOC_READ, KVMIO, 0x98, 4);
/// `TUNSETOFFLOAD` (the tap backend sets offloads when the guest activates the device).
const TUNSETOFFLOAD: u64 = ioc(IOC_WRITE, b'T' as u64, 208, 4);
/// `io_uring_register` opcodes a new ring needs (include/uapi/linux/io_uring.h).
const IORING_REGISTER_RESTRICTIONS: u64 = 11;
/// Enables a ring created disabled, once its restrictions are in.
const IORING_REGISTER_ENABLE_RINGS: u64 = 12;
/// `TIOCOUTQ` (= SIOCOUTQ: unsent bytes of a TCP socket).
const TIOCOUTQ: u64 = libc::TIOCOUTQ;
/// `FIONREAD` (= SIOCINQ).
const FIONREAD: u64 = libc::FIONREAD;
/// `FIONBIO` (set or clear O_NONBLOCK).
pub(super) const FIONBIO: u64 = libc::FIONBIO;

/// One syscall's rules: empty = always allowed; otherwise allowed when any rule matches.
pub(super) type Rules = BTreeMap<i64, Vec<SeccompRule>>;

pub(super) fn allow(rules: &mut Rules, nrs: &[libc::c_long]) {
    for &nr in nrs {
        rules.insert(nr, Vec::new());
    }
}

/// Allows `nr` when argument `arg` equals one of `values`.
pub(super) fn allow_arg_in(
    rules: &mut Rules,
    nr: libc::c_long,
    arg: u8,
    len: Len,
    values: &[u64],
) -> Result<(), SandboxError> {
    let mut list = Vec::with_capacity(values.len());
    for &v in values {
        list.push(rule(vec![cond(arg, len.clone(), Op::Eq, v)?])?);
    }
    rules.insert(nr, list);
    Ok(())
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| SandboxError::Filter(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conds).map_err(|e| SandboxError::Filter(e.to_string()))
}

/// What every thread needs: memory, futexes, its own exit, writing to stdout/stderr/eventfds,
/// sleeping, and aborting (which signals itself).
pub(super) fn common(rules: &mut Rules) -> Result<(), SandboxError> {
    allow(
        rules,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_sched_yield,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_getrandom,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_restart_syscall,
        ],
    );
    // No executable mappings: mmap/mprotect only without PROT_EXEC.
    let no_exec = || -> Result<Vec<SeccompRule>, SandboxError> {
        Ok(vec![rule(vec![cond(
            2,
            Len::Dword,
            Op::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    rules.insert(libc::SYS_mmap, no_exec()?);
    rules.insert(libc::SYS_mprotect, no_exec()?);
    allow_arg_in(
        rules,
        libc::SYS_fcntl,
        1,
        Len::Dword,
        &[
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ],
    )?;
    // Signals only to threads of this process (vCPU kicks, abort()).
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    allow_arg_in(rules, libc::SYS_tgkill, 0, Len::Dword, &[pid])?;
    Ok(())
}

/// The device worker's list: the io_uring loop, the netstack's host sockets, the tap.
fn worker(rules: &mut Rules) -> Result<(), SandboxError> {
    common(rules)?;
    allow(
        rules,
        &[
            libc::SYS_io_uring_enter,
            // The netstack checks a socket's readiness with a zero-timeout poll.
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept4,
            libc::SYS_getsockopt,
            libc::SYS_setsockopt,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_shutdown,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_sendmmsg,
            libc::SYS_recvmmsg,
            libc::SYS_readv,
            libc::SYS_getgid,
            // virtio-blk: the image's current size before a pass of writes (its I/O itself
            // runs on the io_uring ring).
            libc::SYS_lseek,
            // The TLS proxy's thread (launched like a device worker) runs a tokio runtime:
            // epoll for readiness, an eventfd to be woken by the netstack's handoffs.
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_eventfd2,
        ],
    );
    // Host sockets are IPv4/IPv6 only (TCP, UDP, ICMP ping or raw ICMP); the vsock worker
    // adds Unix sockets (`vsock_worker_rules`).
    allow_arg_in(
        rules,
        libc::SYS_socket,
        0,
        Len::Dword,
        &[libc::AF_INET as u64, libc::AF_INET6 as u64],
    )?;
    // The embedding API's connections (dial_guest, listen) are Unix socket pairs the worker
    // creates when it opens the guest-side flow.
    allow_arg_in(
        rules,
        libc::SYS_socketpair,
        0,
        Len::Dword,
        &[libc::AF_UNIX as u64],
    )?;
    allow_arg_in(
        rules,
        libc::SYS_ioctl,
        1,
        Len::Dword,
        // FIONBIO: std's set_nonblocking on the embedding API's socket pairs.
        &[TIOCOUTQ, FIONREAD, FIONBIO, TUNSETOFFLOAD],
    )?;
    Ok(())
}

/// The virtio-vsock worker's list: the worker's, plus `socket(AF_UNIX)` for the guest's
/// connections to `<uds_path>_<port>`. Only that thread gets it (the launcher picks it by
/// the thread's name, [`devices::vsock::WORKER_THREAD`]), so no other worker can reach Unix
/// sockets by path.
fn vsock_worker_rules() -> Result<Rules, SandboxError> {
    let mut rules = rules_for(ThreadKind::Worker)?;
    unix_sockets_too(&mut rules)?;
    Ok(rules)
}

fn unix_sockets_too(rules: &mut Rules) -> Result<(), SandboxError> {
    allow_arg_in(
        rules,
        libc::SYS_socket,
        0,
        Len::Dword,
        &[
            libc::AF_INET as u64,
            libc::AF_INET6 as u64,
            libc::AF_UNIX as u64,
        ],
    )
}

/// Compiles the virtio-vsock worker's filters (see `vsock_worker_rules`).
pub fn compile_vsock_worker() -> Result<KindFilter, SandboxError> {
    compile_rules(vsock_worker_rules()?)
}

/// The allow-list of `kind`.
fn rules_for(kind: ThreadKind) -> Result<Rules, SandboxError> {
    let mut rules = Rules::new();
    match kind {
        ThreadKind::Vmm => {
            common(&mut rules)?;
            // rt_sigtimedwait: the CLI's network-switch thread waits for SIGUSR1/SIGUSR2.
            allow(
                &mut rules,
                &[libc::SYS_poll, libc::SYS_ppoll, libc::SYS_rt_sigtimedwait],
            );
            // Restoring the stop-signal handlers at the end, never SIGSYS's.
            rules.insert(
                libc::SYS_rt_sigaction,
                vec![rule(vec![cond(
                    0,
                    Len::Dword,
                    Op::Ne,
                    libc::SIGSYS as u64,
                )?])?],
            );
        }
        ThreadKind::Vcpu => {
            common(&mut rules)?;
            // Activating a device on the guest's request creates its ring and stop eventfd,
            // and locks the ring to the loop's operations before enabling it.
            allow(&mut rules, &[libc::SYS_io_uring_setup, libc::SYS_eventfd2]);
            allow_arg_in(
                &mut rules,
                libc::SYS_io_uring_register,
                1,
                Len::Dword,
                &[IORING_REGISTER_RESTRICTIONS, IORING_REGISTER_ENABLE_RINGS],
            )?;
            allow_arg_in(
                &mut rules,
                libc::SYS_ioctl,
                1,
                Len::Dword,
                &[KVM_RUN, KVM_GET_REGS, KVM_GET_MP_STATE, TUNSETOFFLOAD],
            )?;
        }
        ThreadKind::Worker => worker(&mut rules)?,
        ThreadKind::Api => super::seccomp_api::api(&mut rules)?,
        ThreadKind::Launcher => {
            worker(&mut rules)?;
            // The vsock worker it starts stacks its filter on this one.
            unix_sockets_too(&mut rules)?;
            // Creating threads (never processes) and what a new thread does before it
            // installs its own filter.
            allow(
                &mut rules,
                &[
                    libc::SYS_clone3,
                    libc::SYS_set_robust_list,
                    libc::SYS_rseq,
                    libc::SYS_sched_getaffinity,
                ],
            );
            rules.insert(
                libc::SYS_clone,
                vec![rule(vec![cond(
                    0,
                    Len::Qword,
                    Op::MaskedEq(libc::CLONE_THREAD as u64),
                    libc::CLONE_THREAD as u64,
                )?])?],
            );
            allow_arg_in(
                &mut rules,
                libc::SYS_prctl,
                0,
                Len::Dword,
                &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
            )?;
            // A new worker stacks its own filter, which can only narrow this one.
            allow_arg_in(
                &mut rules,
                libc::SYS_seccomp,
                0,
                Len::Dword,
                &[libc::SECCOMP_SET_MODE_FILTER as u64],
            )?;
        }
    }
    Ok(rules)
}

/// The kind whose filter the calling thread installed, if any.
pub fn current_kind() -> Option<ThreadKind> {
    let code = KIND.with(|k| k.get());
    ThreadKind::ALL.into_iter().find(|k| k.code() == code)
}

/// How many syscalls `kind` may make (for docs and the report).
pub fn allowed_count(kind: ThreadKind) -> Result<usize, SandboxError> {
    Ok(rules_for(kind)?.len())
}

/// The syscalls that open a path: answered `EACCES` by [`KindFilter`]'s second program.
const OPEN_SYSCALLS: [libc::c_long; 3] = [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2];

/// The compiled filters of one thread kind: two programs, because seccompiler gives each
/// program one action for its matches. The kernel runs both and takes the stricter answer.
pub struct KindFilter {
    /// Opening any path fails with `EACCES`; everything else passes to `allow`. (glibc's
    /// malloc opens /proc/sys/vm/overcommit_memory the first time a thread's arena shrinks,
    /// at any point of a run; it copes with the error.) `None` for the API thread, whose
    /// calls name files it must open.
    deny_open: Option<BpfProgram>,
    /// The kind's allow-list; anything else traps (SIGSYS).
    allow: BpfProgram,
}

impl KindFilter {
    /// BPF instructions in both programs.
    pub fn len(&self) -> usize {
        self.deny_open.as_ref().map_or(0, Vec::len) + self.allow.len()
    }

    /// Whether both programs are empty (never, for a compiled filter).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn to_bpf(filter: SeccompFilter) -> Result<BpfProgram, SandboxError> {
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Filter(e.to_string()))
}

/// Compiles the filters of `kind` to BPF.
pub fn compile(kind: ThreadKind) -> Result<KindFilter, SandboxError> {
    let mut filter = compile_rules(rules_for(kind)?)?;
    if kind == ThreadKind::Api {
        filter.deny_open = None;
    }
    Ok(filter)
}

/// Compiles the VMM thread's filters plus `unlinkat(dir, name, 0)` for each of `dirs` and
/// nothing else: the thread that tears a VM down removes the VM's vsock socket file, in the
/// directory the VMM opened (`O_PATH`) before any filter went in, and no other file.
pub fn compile_vmm_unlinking_in(dirs: &[std::os::fd::RawFd]) -> Result<KindFilter, SandboxError> {
    let mut rules = rules_for(ThreadKind::Vmm)?;
    let mut list = Vec::with_capacity(dirs.len());
    for &fd in dirs {
        list.push(rule(vec![
            cond(0, Len::Dword, Op::Eq, fd as u64)?,
            cond(2, Len::Dword, Op::Eq, 0)?,
        ])?);
    }
    if !list.is_empty() {
        rules.insert(libc::SYS_unlinkat, list);
    }
    compile_rules(rules)
}

fn compile_rules(mut rules: Rules) -> Result<KindFilter, SandboxError> {
    allow(&mut rules, &OPEN_SYSCALLS);
    let allow_list = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SandboxError::Filter(e.to_string()))?;
    let mut opens = Rules::new();
    allow(&mut opens, &OPEN_SYSCALLS);
    let deny_open = SeccompFilter::new(
        opens,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| SandboxError::Filter(e.to_string()))?;
    Ok(KindFilter {
        deny_open: Some(to_bpf(deny_open)?),
        allow: to_bpf(allow_list)?,
    })
}

/// Installs the filters of `kind` on the calling thread (no_new_privs first). The open
/// filter goes first: once the allow-list is in, installing another filter may be refused.
pub fn install(kind: ThreadKind, filter: &KindFilter) -> Result<(), SandboxError> {
    // Set before the allow-list goes in, so a trap right after it names the kind; cleared
    // again if no filter went in at all.
    let previous = KIND.with(|k| k.replace(kind.code()));
    let programs = filter
        .deny_open
        .iter()
        .chain(std::iter::once(&filter.allow));
    for (i, program) in programs.enumerate() {
        if let Err(e) = seccompiler::apply_filter(program) {
            if i == 0 {
                KIND.with(|k| k.set(previous));
            }
            return Err(SandboxError::Install {
                kind: kind.name(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: three ints, padding, then
/// `_sigsys { void *_call_addr; int _syscall; unsigned _arch; }`.
const SI_SYSCALL_OFFSET: usize = 24;

/// Installs the process-wide SIGSYS handler (before any filter).
pub fn install_sigsys_handler() -> Result<(), SandboxError> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; we then set the
    // handler and SA_SIGINFO, and `on_sigsys` has the three-argument signature SA_SIGINFO
    // calls with.
    let rc = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SandboxError::Install {
            kind: "process (SIGSYS handler)",
            reason: std::io::Error::last_os_error().to_string(),
        })
    }
}

/// Writes `ringfence: seccomp: thread <kind> made disallowed syscall N; ...` and exits.
/// Async-signal-safe: no allocation, no locks, only `write` and `_exit`.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passed a valid siginfo for this SIGSYS; seccomp fills the
        // `_sigsys` member, whose `_syscall` int lives at SI_SYSCALL_OFFSET on x86_64.
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) }
    };
    let kind = KIND.try_with(|k| k.get()).unwrap_or(0);
    let mut buf = [0u8; 160];
    let mut len = 0;
    for part in [
        &b"ringfence: seccomp: thread "[..],
        ThreadKind::name_of_code(kind),
        b" made disallowed syscall ",
    ] {
        len = append(&mut buf, len, part);
    }
    let mut digits = [0u8; 12];
    len = append(&mut buf, len, format_int(nr, &mut digits));
    len = append(
        &mut buf,
        len,
        b"; rerun with --seccomp off to debug (see docs/security.md)\n",
    );
    // SAFETY: write and _exit are async-signal-safe; `buf[..len]` is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(VIOLATION_STATUS);
    }
}

fn append(buf: &mut [u8], len: usize, part: &[u8]) -> usize {
    let n = part.len().min(buf.len() - len);
    buf[len..len + n].copy_from_slice(&part[..n]);
    len + n
}

/// Decimal text of `v` in `out`, without allocating.
fn format_int(v: i32, out: &mut [u8; 12]) -> &[u8] {
    let mut n = i64::from(v).unsigned_abs();
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        out[i] = b'-';
    }
    &out[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_to_bpf() {
        for kind in ThreadKind::ALL {
            let bpf = compile(kind).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            assert!(!bpf.is_empty(), "{}", kind.name());
            // The kernel's limit is 4096 instructions per program.
            assert!(
                bpf.len() < 4096,
                "{}: {} instructions",
                kind.name(),
                bpf.len()
            );
            // Listed by `cargo test -p ringfence every_filter -- --nocapture` (docs/security.md).
            let count = allowed_count(kind).expect("count");
            println!(
                "{}: {count} syscalls, {} BPF instructions",
                kind.name(),
                bpf.len()
            );
        }
    }

    #[test]
    fn the_vmm_thread_may_unlink_in_its_vsock_directory_only() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("rf-seccomp-unlink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("v.sock"), b"").expect("file");
        let dir_fd = std::fs::File::open(&dir).expect("open dir");
        let fd = dir_fd.as_raw_fd();
        let filter = compile_vmm_unlinking_in(&[fd]).expect("compile");
        assert!(!rules_for(ThreadKind::Vmm)
            .expect("rules")
            .contains_key(&libc::SYS_unlinkat));
        let removed = std::thread::spawn(move || {
            install(ThreadKind::Vmm, &filter).expect("install");
            // SAFETY: a valid directory descriptor and a NUL-terminated name.
            unsafe { libc::unlinkat(fd, c"v.sock".as_ptr(), 0) }
        })
        .join()
        .expect("thread");
        assert_eq!(removed, 0);
        assert!(!dir.join("v.sock").exists());
        drop(dir_fd);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_filtered_thread_cannot_open_files_and_keeps_running() {
        let filter = compile(ThreadKind::Worker).expect("compile");
        let opened = std::thread::spawn(move || {
            install(ThreadKind::Worker, &filter).expect("install");
            std::fs::File::open("/proc/self/status").map(|_| ())
        })
        .join()
        .expect("thread");
        let err = opened.expect_err("open must fail under the filter");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn no_list_allows_process_creation_or_exec() {
        for kind in ThreadKind::ALL {
            let rules = rules_for(kind).expect("rules");
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
                libc::SYS_getpgid,
            ] {
                assert!(!rules.contains_key(&nr), "{} allows {nr}", kind.name());
            }
        }
        // Only the launcher creates threads.
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Worker] {
            assert!(!rules_for(kind)
                .expect("rules")
                .contains_key(&libc::SYS_clone3));
        }
    }

    #[test]
    fn only_the_vsock_worker_and_its_launcher_may_create_unix_sockets() {
        let families = |rules: &Rules| rules.get(&libc::SYS_socket).map_or(0, Vec::len);
        assert_eq!(families(&rules_for(ThreadKind::Worker).expect("worker")), 2);
        assert_eq!(families(&vsock_worker_rules().expect("vsock")), 3);
        assert_eq!(
            families(&rules_for(ThreadKind::Launcher).expect("launcher")),
            3
        );
        assert_eq!(families(&rules_for(ThreadKind::Vcpu).expect("vcpu")), 0);
        assert!(compile_vsock_worker().expect("compile").len() < 8192);
    }

    #[test]
    fn the_launcher_allows_everything_a_worker_does() {
        let worker = rules_for(ThreadKind::Worker).expect("worker");
        let launcher = rules_for(ThreadKind::Launcher).expect("launcher");
        for nr in worker.keys() {
            assert!(launcher.contains_key(nr), "launcher lacks {nr}");
        }
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_ae98);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
    }

    #[test]
    fn integers_format_without_allocation() {
        let mut d = [0u8; 12];
        assert_eq!(format_int(0, &mut d), b"0");
        assert_eq!(format_int(121, &mut d), b"121");
        assert_eq!(format_int(-1, &mut d), b"-1");
        assert_eq!(format_int(i32::MIN, &mut d), b"-2147483648");
    }
}
