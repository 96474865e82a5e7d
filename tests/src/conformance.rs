//! Boot-protocol conformance kernels: tiny guests, generated at test time, that check what the
//! VMM handed over at entry and report the first failed check through the exit port (0xf4).
//!
//! Two kernels share one set of checks and one numbering of failure codes ([`codes`]):
//! - [`pvh_kernel`]: a PVH ELF entered in 32-bit protected mode with `ebx` = `hvm_start_info`;
//! - [`bzimage_kernel`]: a bzImage entered at its 64-bit entry with `rsi` = `boot_params`.
//!
//! What the test expects (command line, memory size, initrd size and checksum) is compiled
//! into the kernel by [`Expect`]; a test proves a check can fail by building a kernel with a
//! deliberately wrong expectation and asserting the matching code. Each kernel runs a few
//! thousand instructions plus five per initrd byte, so it finishes in milliseconds even where
//! guest kernel mode is emulated.
//!
//! The memory-map checks read 32-bit halves and insist the high halves are zero, so they cover
//! guests below 3 GiB (no RAM above 4 GiB), which is all the tests use.

use crate::asm::{Asm, Cond, Label, Mode, Reg, Sreg};
use crate::images::{BzImage, PvhElf, LOAD_ADDR};

/// The failure codes a conformance kernel writes to port 0xf4 (0 means every check passed).
pub mod codes {
    /// All checks passed.
    pub const PASS: u32 = 0;
    /// `hvm_start_info.magic` is not 0x336ec578 / `boot_params.hdr.header` is not "HdrS".
    pub const BAD_MAGIC: u32 = 1;
    /// `hvm_start_info.version` < 1 / `boot_params.hdr.type_of_loader` left 0.
    pub const BAD_VERSION: u32 = 2;
    /// CR0.PE is clear.
    pub const CR0_PE_CLEAR: u32 = 3;
    /// CR0.PG is wrong: set at a PVH entry, clear at the 64-bit entry.
    pub const CR0_PG_WRONG: u32 = 4;
    /// CR4.PAE is clear at the 64-bit entry.
    pub const CR4_PAE_CLEAR: u32 = 5;
    /// EFER is wrong: LME set at a PVH entry, LMA clear at the 64-bit entry.
    pub const EFER_WRONG: u32 = 6;
    /// CS is wrong: not a flat 32-bit code descriptor (PVH) / selector not 0x10 (64-bit).
    pub const CS_WRONG: u32 = 7;
    /// DS/ES/SS wrong: not flat writable data descriptors (PVH) / selectors not 0x18 (64-bit).
    pub const DATA_SEGMENTS_WRONG: u32 = 8;
    /// RFLAGS.IF is set: interrupts were enabled at entry.
    pub const INTERRUPTS_ON: u32 = 9;
    /// `call`/`pop` returned an address other than where the code was linked (CS base not 0).
    pub const IP_WRONG: u32 = 10;
    /// The command-line pointer is 0 or above 4 GiB.
    pub const CMDLINE_PTR_BAD: u32 = 11;
    /// The command line differs from the expected bytes (or is not NUL-terminated there).
    pub const CMDLINE_MISMATCH: u32 = 12;
    /// The memory map is empty or has an entry above 4 GiB.
    pub const MEMMAP_EMPTY_OR_HIGH: u32 = 13;
    /// Memory-map entries overlap or are not sorted by address.
    pub const MEMMAP_UNSORTED: u32 = 14;
    /// The last RAM entry does not end at the guest memory size.
    pub const MEMMAP_END_WRONG: u32 = 15;
    /// Total RAM is above the memory size or more than 1 MiB below it.
    pub const MEMMAP_TOTAL_WRONG: u32 = 16;
    /// No RAM entry covers the kernel image at 1 MiB.
    pub const MEMMAP_KERNEL_NOT_RAM: u32 = 17;
    /// An initrd was expected but none was handed over (nr_modules != 1 / ramdisk_image 0).
    pub const INITRD_MISSING: u32 = 20;
    /// The initrd address is not page-aligned or lies above 4 GiB.
    pub const INITRD_ADDR_BAD: u32 = 21;
    /// The initrd size differs from the file size.
    pub const INITRD_SIZE_WRONG: u32 = 22;
    /// The initrd bytes in guest memory do not match the file's checksum.
    pub const INITRD_CHECKSUM_WRONG: u32 = 23;
    /// An initrd was handed over although none was given.
    pub const INITRD_UNEXPECTED: u32 = 24;
}

/// What a conformance kernel expects to find.
#[derive(Clone, Debug)]
pub struct Expect {
    /// The exact command line (without the NUL).
    pub cmdline: Vec<u8>,
    /// Guest memory in bytes (must be below 3 GiB).
    pub mem_bytes: u64,
    /// The initrd, if one is passed: its size and [`checksum`].
    pub initrd: Option<InitrdExpect>,
}

/// The initrd a kernel expects.
#[derive(Clone, Copy, Debug)]
pub struct InitrdExpect {
    /// Size in bytes.
    pub size: u32,
    /// [`checksum`] of the contents.
    pub checksum: u32,
}

impl InitrdExpect {
    /// The expectation for `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        InitrdExpect {
            size: bytes.len() as u32,
            checksum: checksum(bytes),
        }
    }
}

/// The checksum the kernels compute over the initrd: `h = rol(h, 5) + byte`, from 0.
pub fn checksum(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |h, &b| h.rotate_left(5).wrapping_add(u32::from(b)))
}

/// Layout of a kernel's image: code first, then data at fixed offsets.
const DATA_OFFSET: u32 = 0x2000;
const SCRATCH_OFFSET: u32 = 0x3000;
const STACK_OFFSET: u32 = 0x5000;
/// Bytes reserved after the code for data, scratch and stack.
const IMAGE_SPAN: u32 = 0x5000;
/// The longest command line a kernel can embed.
const MAX_CMDLINE: usize = (SCRATCH_OFFSET - DATA_OFFSET) as usize - 1;

/// The scratch words the checks use, relative to the image base.
struct Addrs {
    data: u32,
    sgdt: u32,
    ram_end: u32,
    covers: u32,
    stack_top: u32,
    image_end: u32,
}

impl Addrs {
    fn at(base: u32) -> Self {
        Addrs {
            data: base + DATA_OFFSET,
            sgdt: base + SCRATCH_OFFSET,
            ram_end: base + SCRATCH_OFFSET + 0x10,
            covers: base + SCRATCH_OFFSET + 0x14,
            stack_top: base + STACK_OFFSET,
            image_end: base + IMAGE_SPAN,
        }
    }
}

/// Emits the code and keeps one exit stub per failure code.
struct Kernel {
    asm: Asm,
    fails: Vec<(u32, Label)>,
    addrs: Addrs,
}

impl Kernel {
    fn new(mode: Mode, base: u32) -> Self {
        Kernel {
            asm: Asm::new(mode, base),
            fails: Vec::new(),
            addrs: Addrs::at(base),
        }
    }

    /// The label of the stub that exits with `code`.
    fn fail(&mut self, code: u32) -> Label {
        if let Some((_, l)) = self.fails.iter().find(|(c, _)| *c == code) {
            return *l;
        }
        let l = self.asm.label();
        self.fails.push((code, l));
        l
    }

    /// `jcc` to the stub for `code`.
    fn fail_if(&mut self, cond: Cond, code: u32) {
        let l = self.fail(code);
        self.asm.jcc(cond, l);
    }

    fn exit_with(asm: &mut Asm, code: u32) {
        asm.mov_imm(Reg::Ax, code);
        asm.out32(0xf4);
        asm.cli();
        asm.hlt();
    }

    /// Emits the stubs, appends `data` at the data offset, and returns the image bytes.
    fn finish(mut self, cmdline: &[u8]) -> Vec<u8> {
        for (code, label) in std::mem::take(&mut self.fails) {
            self.asm.bind(label);
            Self::exit_with(&mut self.asm, code);
        }
        let mut image = self.asm.finish();
        assert!(
            image.len() <= DATA_OFFSET as usize,
            "conformance kernel code grew past its data"
        );
        image.resize(DATA_OFFSET as usize, 0xcc);
        image.extend_from_slice(cmdline);
        image.push(0);
        image
    }

    /// IF must be clear.
    fn check_interrupts_off(&mut self) {
        self.asm.pushf();
        self.asm.pop(Reg::Ax);
        self.asm.test_imm(Reg::Ax, 1 << 9);
        self.fail_if(Cond::Ne, codes::INTERRUPTS_ON);
    }

    /// `call`/`pop` must yield the linked address of the instruction after the call.
    fn check_ip(&mut self) {
        let next = self.asm.label();
        self.asm.call(next);
        let expected = self.asm.here();
        self.asm.bind(next);
        self.asm.pop(Reg::Ax);
        self.asm.cmp_imm64(Reg::Ax, expected);
        self.fail_if(Cond::Ne, codes::IP_WRONG);
    }

    /// Compares the NUL-terminated string at `ptr` (already checked non-zero) with the
    /// embedded expectation. Clobbers esi, edi, ecx.
    fn check_cmdline(&mut self, ptr: Reg, len: usize) {
        self.asm.mov_ptr(Reg::Si, ptr);
        self.asm.mov_imm(Reg::Di, self.addrs.data);
        self.asm.mov_imm(Reg::Cx, len as u32 + 1);
        self.asm.cld();
        self.asm.repe_cmpsb();
        self.fail_if(Cond::Ne, codes::CMDLINE_MISMATCH);
    }

    /// Walks `count` (in ecx) entries of `stride` bytes at `table` (in esi); both the PVH and
    /// the e820 layout have addr at 0, size at 8 and type at 16. Clobbers eax, ecx, edx, esi,
    /// edi, ebp.
    fn check_memmap(&mut self, stride: u32, mem_bytes: u64, kernel_end: u32) {
        let a = &mut self.asm;
        a.cmp_imm(Reg::Cx, 0);
        let empty = self.fail(codes::MEMMAP_EMPTY_OR_HIGH);
        let a = &mut self.asm;
        a.jcc(Cond::E, empty);
        a.xor(Reg::Di, Reg::Di); // end of the previous entry
        a.xor(Reg::Bp, Reg::Bp); // RAM total
        a.store_abs(self.addrs.ram_end, Reg::Bp);
        a.store_abs(self.addrs.covers, Reg::Bp);
        let top = a.label();
        let skip = a.label();
        a.bind(top);
        a.load32(Reg::Ax, Reg::Si, 4);
        a.cmp_imm(Reg::Ax, 0);
        a.jcc(Cond::Ne, empty);
        a.load32(Reg::Ax, Reg::Si, 12);
        a.cmp_imm(Reg::Ax, 0);
        a.jcc(Cond::Ne, empty);
        a.load32(Reg::Ax, Reg::Si, 0);
        a.cmp(Reg::Ax, Reg::Di);
        self.fail_if(Cond::B, codes::MEMMAP_UNSORTED);
        let a = &mut self.asm;
        a.load32(Reg::Dx, Reg::Si, 8);
        a.add(Reg::Dx, Reg::Ax);
        a.jcc(Cond::B, empty); // carry: the entry ends above 4 GiB
        a.mov(Reg::Di, Reg::Dx);
        a.load32(Reg::Dx, Reg::Si, 16);
        a.cmp_imm(Reg::Dx, 1);
        a.jcc(Cond::Ne, skip);
        a.load32(Reg::Dx, Reg::Si, 8);
        a.add(Reg::Bp, Reg::Dx);
        a.store_abs(self.addrs.ram_end, Reg::Di);
        a.cmp_imm(Reg::Ax, LOAD_ADDR);
        a.jcc(Cond::A, skip);
        a.cmp_imm(Reg::Di, kernel_end);
        a.jcc(Cond::B, skip);
        a.mov_imm(Reg::Dx, 1);
        a.store_abs(self.addrs.covers, Reg::Dx);
        a.bind(skip);
        a.add_imm_ptr(Reg::Si, stride);
        a.dec(Reg::Cx);
        a.jcc(Cond::Ne, top);

        let mem = mem_bytes as u32;
        a.load_abs(Reg::Ax, self.addrs.ram_end);
        a.cmp_imm(Reg::Ax, mem);
        self.fail_if(Cond::Ne, codes::MEMMAP_END_WRONG);
        self.asm.cmp_imm(Reg::Bp, mem);
        self.fail_if(Cond::A, codes::MEMMAP_TOTAL_WRONG);
        self.asm.cmp_imm(Reg::Bp, mem.saturating_sub(1 << 20));
        self.fail_if(Cond::B, codes::MEMMAP_TOTAL_WRONG);
        self.asm.load_abs(Reg::Ax, self.addrs.covers);
        self.asm.cmp_imm(Reg::Ax, 1);
        self.fail_if(Cond::Ne, codes::MEMMAP_KERNEL_NOT_RAM);
    }

    /// Checks alignment, size and checksum of the initrd at eax (address, high half already
    /// checked) with size in ecx. Clobbers eax, ecx, edx, esi.
    fn check_initrd_contents(&mut self, expect: InitrdExpect) {
        self.asm.test_imm(Reg::Ax, 0xfff);
        self.fail_if(Cond::Ne, codes::INITRD_ADDR_BAD);
        self.asm.cmp_imm(Reg::Cx, expect.size);
        self.fail_if(Cond::Ne, codes::INITRD_SIZE_WRONG);
        let a = &mut self.asm;
        a.mov_ptr(Reg::Si, Reg::Ax);
        a.xor(Reg::Ax, Reg::Ax);
        let top = a.label();
        let done = a.label();
        a.cmp_imm(Reg::Cx, 0);
        a.jcc(Cond::E, done);
        a.bind(top);
        a.load8(Reg::Dx, Reg::Si, 0);
        a.rol(Reg::Ax, 5);
        a.add(Reg::Ax, Reg::Dx);
        a.inc_ptr(Reg::Si);
        a.dec(Reg::Cx);
        a.jcc(Cond::Ne, top);
        a.bind(done);
        a.cmp_imm(Reg::Ax, expect.checksum);
        self.fail_if(Cond::Ne, codes::INITRD_CHECKSUM_WRONG);
    }

    fn pass(&mut self) {
        Self::exit_with(&mut self.asm, codes::PASS);
    }
}

/// `hvm_start_info` offsets (Xen's `arch-x86/hvm/start_info.h`).
mod start_info {
    pub const MAGIC: i32 = 0;
    pub const VERSION: i32 = 4;
    pub const NR_MODULES: i32 = 12;
    pub const MODLIST_PADDR: i32 = 16;
    pub const CMDLINE_PADDR: i32 = 24;
    pub const MEMMAP_PADDR: i32 = 40;
    pub const MEMMAP_ENTRIES: i32 = 48;
    pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
}

fn check_expect(expect: &Expect) {
    assert!(
        expect.mem_bytes < 3 << 30,
        "conformance kernels cover < 3 GiB"
    );
    assert!(expect.cmdline.len() <= MAX_CMDLINE, "command line too long");
}

/// Checks a 32-bit descriptor at `[edi]`: low dword must be `lo`, `hi & mask` must be `hi`.
fn check_descriptor(k: &mut Kernel, lo: u32, mask: u32, hi: u32, code: u32) {
    k.asm.load32(Reg::Ax, Reg::Di, 0);
    k.asm.cmp_imm(Reg::Ax, lo);
    k.fail_if(Cond::Ne, code);
    k.asm.load32(Reg::Ax, Reg::Di, 4);
    k.asm.and_imm(Reg::Ax, mask);
    k.asm.cmp_imm(Reg::Ax, hi);
    k.fail_if(Cond::Ne, code);
}

/// Points edi at the GDT descriptor of segment register `s`, failing with `code` when the
/// selector is null or past the GDT limit (stored by `sgdt` at `addrs.sgdt`).
fn locate_descriptor(k: &mut Kernel, s: Sreg, code: u32) {
    let sgdt = k.addrs.sgdt;
    let a = &mut k.asm;
    a.mov_from_sreg(Reg::Ax, s);
    a.and_imm(Reg::Ax, 0xfff8);
    a.cmp_imm(Reg::Ax, 0);
    k.fail_if(Cond::E, code);
    let a = &mut k.asm;
    a.load_abs(Reg::Dx, sgdt); // limit in the low 16 bits
    a.and_imm(Reg::Dx, 0xffff);
    a.mov(Reg::Di, Reg::Ax);
    a.add_imm(Reg::Di, 7);
    a.cmp(Reg::Di, Reg::Dx);
    k.fail_if(Cond::A, code);
    let a = &mut k.asm;
    a.load_abs(Reg::Di, sgdt + 2); // base
    a.add(Reg::Di, Reg::Ax);
}

/// Builds the PVH conformance kernel (an ELF file) for `expect`.
pub fn pvh_kernel(expect: &Expect) -> Vec<u8> {
    pvh_kernel_with_prelude(expect, |_| {})
}

/// [`pvh_kernel`] with `prelude` run at the entry before any check: tests use it to damage
/// the handed-over state (e.g. clear `ebx`) and prove the matching check fails.
pub fn pvh_kernel_with_prelude(expect: &Expect, prelude: impl FnOnce(&mut Asm)) -> Vec<u8> {
    check_expect(expect);
    let mut k = Kernel::new(Mode::Bits32, LOAD_ADDR);
    let addrs = Addrs::at(LOAD_ADDR);
    prelude(&mut k.asm);
    k.asm.mov_imm(Reg::Sp, addrs.stack_top);
    k.check_interrupts_off();

    k.asm.mov_from_cr(Reg::Ax, 0);
    k.asm.test_imm(Reg::Ax, 1);
    k.fail_if(Cond::E, codes::CR0_PE_CLEAR);
    k.asm.test_imm(Reg::Ax, 1 << 31);
    k.fail_if(Cond::Ne, codes::CR0_PG_WRONG);
    k.asm.mov_imm(Reg::Cx, 0xc000_0080);
    k.asm.rdmsr();
    k.asm.test_imm(Reg::Ax, 1 << 8);
    k.fail_if(Cond::Ne, codes::EFER_WRONG);
    k.check_ip();

    // Segments: flat 4 GiB descriptors, 32-bit code, writable data.
    k.asm.mov_imm(Reg::Dx, addrs.sgdt);
    k.asm.sgdt(Reg::Dx, 0);
    locate_descriptor(&mut k, Sreg::Cs, codes::CS_WRONG);
    check_descriptor(&mut k, 0xffff, 0xffef_98ff, 0x00cf_9800, codes::CS_WRONG);
    for s in [Sreg::Ds, Sreg::Es, Sreg::Ss] {
        locate_descriptor(&mut k, s, codes::DATA_SEGMENTS_WRONG);
        check_descriptor(
            &mut k,
            0xffff,
            0xffcf_9aff,
            0x00cf_9200,
            codes::DATA_SEGMENTS_WRONG,
        );
    }

    k.asm.load32(Reg::Ax, Reg::Bx, start_info::MAGIC);
    k.asm.cmp_imm(Reg::Ax, start_info::XEN_HVM_START_MAGIC);
    k.fail_if(Cond::Ne, codes::BAD_MAGIC);
    k.asm.load32(Reg::Ax, Reg::Bx, start_info::VERSION);
    k.asm.cmp_imm(Reg::Ax, 1);
    k.fail_if(Cond::B, codes::BAD_VERSION);

    k.asm
        .load32(Reg::Dx, Reg::Bx, start_info::CMDLINE_PADDR + 4);
    k.asm.cmp_imm(Reg::Dx, 0);
    k.fail_if(Cond::Ne, codes::CMDLINE_PTR_BAD);
    k.asm.load32(Reg::Ax, Reg::Bx, start_info::CMDLINE_PADDR);
    k.asm.cmp_imm(Reg::Ax, 0);
    k.fail_if(Cond::E, codes::CMDLINE_PTR_BAD);
    k.check_cmdline(Reg::Ax, expect.cmdline.len());

    k.asm.load32(Reg::Dx, Reg::Bx, start_info::MEMMAP_PADDR + 4);
    k.asm.cmp_imm(Reg::Dx, 0);
    k.fail_if(Cond::Ne, codes::MEMMAP_EMPTY_OR_HIGH);
    k.asm.load32(Reg::Si, Reg::Bx, start_info::MEMMAP_PADDR);
    k.asm.load32(Reg::Cx, Reg::Bx, start_info::MEMMAP_ENTRIES);
    k.check_memmap(24, expect.mem_bytes, addrs.image_end);

    k.asm.load32(Reg::Ax, Reg::Bx, start_info::NR_MODULES);
    match expect.initrd {
        Some(initrd) => {
            k.asm.cmp_imm(Reg::Ax, 1);
            k.fail_if(Cond::Ne, codes::INITRD_MISSING);
            k.asm
                .load32(Reg::Dx, Reg::Bx, start_info::MODLIST_PADDR + 4);
            k.asm.cmp_imm(Reg::Dx, 0);
            k.fail_if(Cond::Ne, codes::INITRD_MISSING);
            k.asm.load32(Reg::Si, Reg::Bx, start_info::MODLIST_PADDR);
            // hvm_modlist_entry: paddr u64 @0, size u64 @8.
            k.asm.load32(Reg::Dx, Reg::Si, 4);
            k.asm.cmp_imm(Reg::Dx, 0);
            k.fail_if(Cond::Ne, codes::INITRD_ADDR_BAD);
            k.asm.load32(Reg::Dx, Reg::Si, 12);
            k.asm.cmp_imm(Reg::Dx, 0);
            k.fail_if(Cond::Ne, codes::INITRD_SIZE_WRONG);
            k.asm.load32(Reg::Ax, Reg::Si, 0);
            k.asm.load32(Reg::Cx, Reg::Si, 8);
            k.check_initrd_contents(initrd);
        }
        None => {
            k.asm.cmp_imm(Reg::Ax, 0);
            k.fail_if(Cond::Ne, codes::INITRD_UNEXPECTED);
        }
    }
    k.pass();
    let payload = k.finish(&expect.cmdline);
    PvhElf {
        bss: IMAGE_SPAN - payload.len() as u32,
        payload,
        entry: LOAD_ADDR,
        pvh_note: true,
    }
    .to_bytes()
}

/// Builds the bzImage conformance kernel for `expect`: its 64-bit entry (load address + 0x200)
/// runs the checks; the 32-bit entry at the load address is a `ud2`.
pub fn bzimage_kernel(expect: &Expect) -> Vec<u8> {
    bzimage_kernel_with_prelude(expect, |_| {})
}

/// [`bzimage_kernel`] with `prelude` run at the 64-bit entry before any check.
pub fn bzimage_kernel_with_prelude(expect: &Expect, prelude: impl FnOnce(&mut Asm)) -> Vec<u8> {
    use crate::images::{hdr, zero_page};
    check_expect(expect);
    let base = LOAD_ADDR + 0x200;
    let mut k = Kernel::new(Mode::Bits64, base);
    let addrs = Addrs::at(base);
    prelude(&mut k.asm);
    k.asm.mov_ptr(Reg::Bx, Reg::Si);
    k.asm.mov_imm(Reg::Sp, addrs.stack_top);
    k.check_interrupts_off();

    k.asm.mov_from_cr(Reg::Ax, 0);
    k.asm.test_imm(Reg::Ax, 1);
    k.fail_if(Cond::E, codes::CR0_PE_CLEAR);
    k.asm.test_imm(Reg::Ax, 1 << 31);
    k.fail_if(Cond::E, codes::CR0_PG_WRONG);
    k.asm.mov_from_cr(Reg::Ax, 4);
    k.asm.test_imm(Reg::Ax, 1 << 5);
    k.fail_if(Cond::E, codes::CR4_PAE_CLEAR);
    k.asm.mov_imm(Reg::Cx, 0xc000_0080);
    k.asm.rdmsr();
    k.asm.test_imm(Reg::Ax, 1 << 10);
    k.fail_if(Cond::E, codes::EFER_WRONG);
    k.check_ip();

    k.asm.mov_from_sreg(Reg::Ax, Sreg::Cs);
    k.asm.and_imm(Reg::Ax, 0xffff);
    k.asm.cmp_imm(Reg::Ax, 0x10);
    k.fail_if(Cond::Ne, codes::CS_WRONG);
    for s in [Sreg::Ds, Sreg::Es, Sreg::Ss] {
        k.asm.mov_from_sreg(Reg::Ax, s);
        k.asm.and_imm(Reg::Ax, 0xffff);
        k.asm.cmp_imm(Reg::Ax, 0x18);
        k.fail_if(Cond::Ne, codes::DATA_SEGMENTS_WRONG);
    }

    k.asm.load32(Reg::Ax, Reg::Bx, hdr::HEADER as i32);
    k.asm.cmp_imm(Reg::Ax, u32::from_le_bytes(*b"HdrS"));
    k.fail_if(Cond::Ne, codes::BAD_MAGIC);
    k.asm.load8(Reg::Ax, Reg::Bx, hdr::TYPE_OF_LOADER as i32);
    k.asm.cmp_imm(Reg::Ax, 0);
    k.fail_if(Cond::E, codes::BAD_VERSION);

    k.asm
        .load32(Reg::Dx, Reg::Bx, zero_page::EXT_CMD_LINE_PTR as i32);
    k.asm.cmp_imm(Reg::Dx, 0);
    k.fail_if(Cond::Ne, codes::CMDLINE_PTR_BAD);
    k.asm.load32(Reg::Ax, Reg::Bx, hdr::CMD_LINE_PTR as i32);
    k.asm.cmp_imm(Reg::Ax, 0);
    k.fail_if(Cond::E, codes::CMDLINE_PTR_BAD);
    k.check_cmdline(Reg::Ax, expect.cmdline.len());

    k.asm
        .load8(Reg::Cx, Reg::Bx, zero_page::E820_ENTRIES as i32);
    k.asm.mov_ptr(Reg::Si, Reg::Bx);
    k.asm.add_imm_ptr(Reg::Si, zero_page::E820_TABLE as u32);
    k.check_memmap(20, expect.mem_bytes, LOAD_ADDR + IMAGE_SPAN + 0x200);

    k.asm
        .load32(Reg::Dx, Reg::Bx, zero_page::EXT_RAMDISK_IMAGE as i32);
    k.asm.cmp_imm(Reg::Dx, 0);
    k.fail_if(Cond::Ne, codes::INITRD_ADDR_BAD);
    k.asm
        .load32(Reg::Dx, Reg::Bx, zero_page::EXT_RAMDISK_SIZE as i32);
    k.asm.cmp_imm(Reg::Dx, 0);
    k.fail_if(Cond::Ne, codes::INITRD_SIZE_WRONG);
    k.asm.load32(Reg::Ax, Reg::Bx, hdr::RAMDISK_IMAGE as i32);
    k.asm.load32(Reg::Cx, Reg::Bx, hdr::RAMDISK_SIZE as i32);
    match expect.initrd {
        Some(initrd) => {
            k.asm.cmp_imm(Reg::Ax, 0);
            k.fail_if(Cond::E, codes::INITRD_MISSING);
            k.check_initrd_contents(initrd);
        }
        None => {
            k.asm.or(Reg::Ax, Reg::Cx);
            k.fail_if(Cond::Ne, codes::INITRD_UNEXPECTED);
        }
    }
    k.pass();
    let code = k.finish(&expect.cmdline);

    let mut protected = vec![0u8; 0x200];
    protected[..2].copy_from_slice(&[0x0f, 0x0b]); // 32-bit entry: ud2
    protected.extend_from_slice(&code);
    protected.resize((IMAGE_SPAN + 0x200) as usize, 0);
    BzImage::new(protected).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_order_sensitive() {
        assert_eq!(checksum(&[]), 0);
        assert_eq!(checksum(&[1]), 1);
        assert_eq!(checksum(&[1, 2]), (1 << 5) + 2);
        assert_ne!(checksum(&[1, 2]), checksum(&[2, 1]));
    }

    #[test]
    fn kernels_build_for_every_shape() {
        let mut e = Expect {
            cmdline: b"console=ttyS0".to_vec(),
            mem_bytes: 128 << 20,
            initrd: None,
        };
        assert!(pvh_kernel(&e).len() > 0x1000);
        e.initrd = Some(InitrdExpect::of(&[1, 2, 3]));
        assert!(bzimage_kernel(&e).len() > 0x1000);
    }
}
