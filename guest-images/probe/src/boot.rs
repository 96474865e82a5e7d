//! CPL0 boot: the PVH entry stub, the prebuilt page tables, GDT, TSS and the
//! exception/cpl0spin entry points.
//!
//! On the hosts we develop on, every CPL0 instruction is emulated (~1 µs each),
//! so this module owns the *only* code that runs at CPL0 on the normal path and
//! keeps it to about thirty instructions: everything that can be a compile-time
//! constant (page tables, GDT) is one, and everything that can run at CPL3
//! (IDT contents, MXCSR, parsing) runs there. It must never grow loops or calls
//! on the boot path.
//!
//! Entry contract (PVH, `XEN_ELFNOTE_PHYS32_ENTRY`): 32-bit protected mode,
//! paging off, flat 4 GiB segments, `ebx` = guest-physical address of
//! `hvm_start_info`. The stub then:
//! 1. loads the GDT (kernel code/data, user code/data, 64-bit TSS);
//! 2. sets CR4.PAE|OSFXSR|OSXMMEXCPT, CR3 (identity map of the low 4 GiB with
//!    2 MiB pages, User+RW+Present on every level), EFER.LME, CR0.PG|NE|MP|PE
//!    (EM clear, so SSE works);
//! 3. far-jumps to 64-bit code, patches the TSS base into its descriptor,
//!    loads TR and the IDT register (the IDT entries are filled later at CPL3,
//!    which the user-accessible mapping allows);
//! 4. `iretq`s to [`crate::probe_main`] at CPL3 with IF=0 on the user stack,
//!    with `rdi` = start_info address.
//!
//! Port I/O at CPL3: RFLAGS.IOPL=3 is requested, but this development host's
//! paravirtual CPL3 ignores IOPL (measured: `in` raised #GP with IOPL=3 set by
//! `iretq` and by `popfq`), so the TSS also carries an all-zero 8 KiB I/O
//! permission bitmap, which does work here and on hardware virtualization.
//!
//! Selectors: 0x08 kernel code, 0x10 kernel data, 0x1b user code, 0x23 user
//! data, 0x28 TSS.

/// Kernel code segment selector (CPL0, 64-bit).
pub const KERNEL_CS: u16 = 0x08;

/// Number of IDT entries loaded into IDTR: the CPU exception vectors, then the
/// interrupt vectors of [`crate::apic`] (all below 64).
pub const IDT_ENTRIES: usize = 64;

/// Value in `rax` that turns a `ud2` at CPL3 into a request for the CPL0 spin
/// loop (`rcx` iterations). This host's CPL3 cannot enter CPL0 through
/// `int n` (every software interrupt raises #UD), but exceptions are
/// delivered, so #UD itself is the gate.
pub const CPL0_SPIN_MAGIC: u64 = 0x5350_494e_4350_4c30; // "SPINCPL0"

/// Value in `rax` that turns a `ud2` at CPL3 into `sti; hlt; cli` at CPL0 (the `idle`
/// scenario): the vCPU sleeps in the host kernel until an interrupt, then returns to CPL3.
pub const CPL0_IDLE_MAGIC: u64 = 0x4944_4c45_5f48_4c54; // "IDLE_HLT"

/// Size in bytes of one exception entry stub in `exception_stubs`.
pub const EXCEPTION_STUB_SIZE: usize = 16;

/// Number of CPU exception vectors that get an entry stub.
pub const EXCEPTION_VECTORS: usize = 32;

extern "C" {
    /// The handler of every external interrupt vector the probe programs (see
    /// [`crate::apic`]): a bare `iretq`. Interrupts are only ever taken inside the
    /// idle gate's `sti; hlt`, whose only job is to wake; the end-of-interrupt is
    /// written at CPL3 afterwards, so CPL0 runs one instruction per interrupt.
    pub fn interrupt_return();
    /// The IDT (`IDT_ENTRIES` 16-byte gates); IDTR already points at it.
    pub static mut idt_table: [u64; 2 * IDT_ENTRIES];
    /// First of `EXCEPTION_VECTORS` entry stubs, `EXCEPTION_STUB_SIZE` bytes apart.
    pub fn exception_stubs();
    /// First byte after the loaded image (linker script).
    pub static __image_end: u8;
}

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 8                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.pvh_start, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    lgdtl gdt_ptr
    movl $0x620, %eax               /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          /* EFER */
    movl $0x100, %eax               /* LME */
    xorl %edx, %edx
    wrmsr
    movl $0x80000033, %eax          /* PG | NE | ET | MP | PE (EM, TS clear) */
    movl %eax, %cr0
    ljmpl $0x08, $long_mode_entry

    .code64
long_mode_entry:
    movl %ebx, %edi                 /* start_info paddr, zero-extended */
    movl $0x10, %eax
    movl %eax, %ss
    movq $kernel_stack_top, %rsp
    movl $boot_tss, %eax            /* patch TSS base (image is below 4 GiB) */
    movw %ax, gdt_tss_desc + 2
    shrl $16, %eax
    movb %al, gdt_tss_desc + 4
    movb %ah, gdt_tss_desc + 7
    movl $0x28, %eax
    ltr %ax
    lidt idt_ptr
    pushq $0x23                     /* SS: user data */
    pushq $user_stack_top - 8       /* RSP: SysV alignment at function entry */
    pushq $0x3002                   /* RFLAGS: IOPL=3, IF=0 */
    pushq $0x1b                     /* CS: user code */
    pushq $probe_main
    iretq

    .balign 16
    .global interrupt_return
interrupt_return:
    iretq

    /* Exception entry stubs, 16 bytes each. Vectors that push an error code
       get only the vector pushed; the others push a zero error code first. */
    .balign 16
    .global exception_stubs
exception_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp exception_common
    .set vec, vec + 1
    .endr

exception_common:
    /* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. A #UD with
       rax = CPL0_SPIN_MAGIC is the cpl0spin request: spin rcx turns at
       CPL0, step over the ud2 and return; rax = CPL0_IDLE_MAGIC is the idle
       request (below). */
    cmpq $6, (%rsp)
    jne 4f
    movabsq $0x5350494e43504c30, %r11
    cmpq %r11, %rax
    jne 5f
    testq %rcx, %rcx
    jz 3f
2:  decq %rcx
    jnz 2b
3:  addq $2, 16(%rsp)
    addq $16, %rsp
    iretq
5:  /* rax = CPL0_IDLE_MAGIC: halt until an interrupt (sti's shadow covers
       hlt, so none is taken before the halt), then return to CPL3. */
    movabsq $0x49444c455f484c54, %r11
    cmpq %r11, %rax
    jne 4f
    sti
    hlt
    cli
    jmp 3b
4:  movq %rsp, %rdi
    andq $-16, %rsp
    call exception_report           /* never returns: prints and exits 0x71 */
1:  jmp 1b

    .section .data.boot_pagetables, "aw"
    .balign 4096
boot_pml4:
    .quad boot_pdpt + 0x7
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x0007
    .quad boot_pd + 0x1007
    .quad boot_pd + 0x2007
    .quad boot_pd + 0x3007
    .fill 508, 8, 0
boot_pd:                            /* 2048 x 2 MiB: P | RW | US | PS */
    .set pde, 0
    .rept 2048
    .quad (pde << 21) | 0x87
    .set pde, pde + 1
    .endr

    .section .data, "aw"
    .balign 16
gdt:
    .quad 0
    .quad 0x00209A0000000000        /* 0x08 kernel code, 64-bit */
    .quad 0x0000920000000000        /* 0x10 kernel data */
    .quad 0x0020FA0000000000        /* 0x18 user code, 64-bit, DPL3 */
    .quad 0x0000F20000000000        /* 0x20 user data, DPL3 */
gdt_tss_desc:                       /* 0x28 64-bit TSS */
    .quad 0x0000890000002068        /* limit: 0x68 + 8 KiB bitmap */
    .quad 0
gdt_end:
    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 8
idt_ptr:
    .word 64 * 16 - 1
    .quad idt_table
    .balign 16
boot_tss:
    .long 0
    .quad kernel_stack_top          /* RSP0 */
    .fill 0x66 - 12, 1, 0
    .word 0x68                      /* I/O permission bitmap offset */
    .fill 8192, 1, 0                /* every port allowed */
    .byte 0xff

    .section .bss
    .balign 4096
    .global idt_table
idt_table:
    .skip 64 * 16
    .balign 4096
kernel_stack:
    .skip 16384
kernel_stack_top:
    .balign 4096
user_stack:
    .skip 1048576
user_stack_top:
    "#,
    options(att_syntax)
);
