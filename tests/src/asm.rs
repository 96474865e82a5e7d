//! A hand encoder for the few dozen x86 instructions the conformance kernels use.
//!
//! It emits 32-bit (protected mode, PVH entry) or 64-bit (long mode, Linux 64-bit entry) code
//! into a byte vector that is loaded at a known guest-physical address, with forward and
//! backward labels resolved as 32-bit relative displacements when [`Asm::finish`] runs.
//!
//! Only the eight legacy registers are offered, and every memory operand is `[base + disp32]`,
//! so the same encoding works in both modes; in 64-bit mode the `*64` methods add REX.W. A
//! 32-bit register write zero-extends in 64-bit mode, which the kernels rely on when they load
//! a guest-physical address below 4 GiB into a base register.
//!
//! Nothing here validates the guest's behaviour: that is [`crate::conformance`]'s job.

/// A general-purpose register (the number is its ModRM encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// eax / rax.
    Ax = 0,
    /// ecx / rcx.
    Cx = 1,
    /// edx / rdx.
    Dx = 2,
    /// ebx / rbx.
    Bx = 3,
    /// esp / rsp.
    Sp = 4,
    /// ebp / rbp.
    Bp = 5,
    /// esi / rsi.
    Si = 6,
    /// edi / rdi.
    Di = 7,
}

/// A segment register, numbered as in `mov r/m16, Sreg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Sreg {
    /// ES.
    Es = 0,
    /// CS.
    Cs = 1,
    /// SS.
    Ss = 2,
    /// DS.
    Ds = 3,
}

/// A condition for `jcc`, numbered as in the opcode's low nibble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cond {
    /// Below (unsigned <).
    B = 0x2,
    /// Above or equal (unsigned >=).
    Ae = 0x3,
    /// Equal / zero.
    E = 0x4,
    /// Not equal / not zero.
    Ne = 0x5,
    /// Below or equal (unsigned <=).
    Be = 0x6,
    /// Above (unsigned >).
    A = 0x7,
}

/// Which mode the code runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 32-bit protected mode.
    Bits32,
    /// 64-bit long mode.
    Bits64,
}

/// A position in the code, bound once with [`Asm::bind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// The code buffer with its labels and pending fixups.
pub struct Asm {
    mode: Mode,
    base: u32,
    code: Vec<u8>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    /// An empty buffer whose first byte will sit at guest-physical `base`.
    pub fn new(mode: Mode, base: u32) -> Self {
        Asm {
            mode,
            base,
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }

    /// The mode this buffer encodes for.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The guest-physical address of the next byte.
    pub fn here(&self) -> u32 {
        self.base + self.code.len() as u32
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the current position.
    pub fn bind(&mut self, label: Label) {
        assert!(self.labels[label.0].is_none(), "label bound twice");
        self.labels[label.0] = Some(self.code.len());
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }

    fn imm32(&mut self, v: u32) {
        self.code.extend_from_slice(&v.to_le_bytes());
    }

    fn rex_w(&mut self) {
        if self.mode == Mode::Bits64 {
            self.code.push(0x48);
        }
    }

    /// ModRM for a register-direct operand.
    fn modrm_reg(&mut self, reg: u8, rm: Reg) {
        self.code.push(0xc0 | (reg << 3) | rm as u8);
    }

    /// ModRM (+SIB) for `[base + disp32]`.
    fn modrm_mem(&mut self, reg: u8, base: Reg, disp: i32) {
        self.code.push(0x80 | (reg << 3) | base as u8);
        if base == Reg::Sp {
            self.code.push(0x24);
        }
        self.code.extend_from_slice(&disp.to_le_bytes());
    }

    /// `mov r32, imm32` (zero-extends in 64-bit mode).
    pub fn mov_imm(&mut self, dst: Reg, v: u32) {
        self.code.push(0xb8 + dst as u8);
        self.imm32(v);
    }

    /// `mov r32, r32`.
    pub fn mov(&mut self, dst: Reg, src: Reg) {
        self.code.push(0x89);
        self.modrm_reg(src as u8, dst);
    }

    /// `mov` of a full pointer-width register (REX.W in 64-bit mode).
    pub fn mov_ptr(&mut self, dst: Reg, src: Reg) {
        self.rex_w();
        self.mov(dst, src);
    }

    /// `mov r32, [disp32]` (absolute, via SIB without base so it is not RIP-relative).
    pub fn load_abs(&mut self, dst: Reg, addr: u32) {
        self.code
            .extend_from_slice(&[0x8b, 0x04 | ((dst as u8) << 3), 0x25]);
        self.imm32(addr);
    }

    /// `mov [disp32], r32` (absolute).
    pub fn store_abs(&mut self, addr: u32, src: Reg) {
        self.code
            .extend_from_slice(&[0x89, 0x04 | ((src as u8) << 3), 0x25]);
        self.imm32(addr);
    }

    /// `mov r32, [base + disp]`.
    pub fn load32(&mut self, dst: Reg, base: Reg, disp: i32) {
        self.code.push(0x8b);
        self.modrm_mem(dst as u8, base, disp);
    }

    /// `mov r64, [base + disp]` (64-bit mode only; a 32-bit load in 32-bit mode).
    pub fn load64(&mut self, dst: Reg, base: Reg, disp: i32) {
        self.rex_w();
        self.load32(dst, base, disp);
    }

    /// `movzx r32, byte [base + disp]`.
    pub fn load8(&mut self, dst: Reg, base: Reg, disp: i32) {
        self.code.extend_from_slice(&[0x0f, 0xb6]);
        self.modrm_mem(dst as u8, base, disp);
    }

    /// `movzx r32, word [base + disp]`.
    pub fn load16(&mut self, dst: Reg, base: Reg, disp: i32) {
        self.code.extend_from_slice(&[0x0f, 0xb7]);
        self.modrm_mem(dst as u8, base, disp);
    }

    /// `mov [base + disp], r32`.
    pub fn store32(&mut self, base: Reg, disp: i32, src: Reg) {
        self.code.push(0x89);
        self.modrm_mem(src as u8, base, disp);
    }

    fn alu_imm(&mut self, ext: u8, dst: Reg, v: u32) {
        self.code.push(0x81);
        self.modrm_reg(ext, dst);
        self.imm32(v);
    }

    /// `add r32, imm32`.
    pub fn add_imm(&mut self, dst: Reg, v: u32) {
        self.alu_imm(0, dst, v);
    }

    /// `or r32, imm32`.
    pub fn or_imm(&mut self, dst: Reg, v: u32) {
        self.alu_imm(1, dst, v);
    }

    /// `and r32, imm32`.
    pub fn and_imm(&mut self, dst: Reg, v: u32) {
        self.alu_imm(4, dst, v);
    }

    /// `sub r32, imm32`.
    pub fn sub_imm(&mut self, dst: Reg, v: u32) {
        self.alu_imm(5, dst, v);
    }

    /// `cmp r32, imm32`.
    pub fn cmp_imm(&mut self, dst: Reg, v: u32) {
        self.alu_imm(7, dst, v);
    }

    /// `add` of an immediate to a pointer-width register (REX.W in 64-bit mode).
    pub fn add_imm_ptr(&mut self, dst: Reg, v: u32) {
        self.rex_w();
        self.alu_imm(0, dst, v);
    }

    /// `inc` of a pointer-width register.
    pub fn inc_ptr(&mut self, dst: Reg) {
        self.rex_w();
        self.inc(dst);
    }

    /// `cmp r64, imm32` (sign-extended; a 32-bit compare in 32-bit mode).
    pub fn cmp_imm64(&mut self, dst: Reg, v: u32) {
        self.rex_w();
        self.alu_imm(7, dst, v);
    }

    /// `add dst, src` (32-bit).
    pub fn add(&mut self, dst: Reg, src: Reg) {
        self.code.push(0x01);
        self.modrm_reg(src as u8, dst);
    }

    /// `or dst, src` (32-bit).
    pub fn or(&mut self, dst: Reg, src: Reg) {
        self.code.push(0x09);
        self.modrm_reg(src as u8, dst);
    }

    /// `xor dst, src` (32-bit).
    pub fn xor(&mut self, dst: Reg, src: Reg) {
        self.code.push(0x31);
        self.modrm_reg(src as u8, dst);
    }

    /// `cmp a, b` (32-bit; flags as for `a - b`).
    pub fn cmp(&mut self, a: Reg, b: Reg) {
        self.code.push(0x39);
        self.modrm_reg(b as u8, a);
    }

    /// `test r32, imm32`.
    pub fn test_imm(&mut self, dst: Reg, v: u32) {
        self.code.push(0xf7);
        self.modrm_reg(0, dst);
        self.imm32(v);
    }

    /// `rol r32, n`.
    pub fn rol(&mut self, dst: Reg, n: u8) {
        self.code.push(0xc1);
        self.modrm_reg(0, dst);
        self.code.push(n);
    }

    /// `shr r32, n`.
    pub fn shr(&mut self, dst: Reg, n: u8) {
        self.code.push(0xc1);
        self.modrm_reg(5, dst);
        self.code.push(n);
    }

    /// `inc r32` (the two-byte form, valid in both modes).
    pub fn inc(&mut self, dst: Reg) {
        self.code.push(0xff);
        self.modrm_reg(0, dst);
    }

    /// `dec r32`.
    pub fn dec(&mut self, dst: Reg) {
        self.code.push(0xff);
        self.modrm_reg(1, dst);
    }

    /// `push r` (native width).
    pub fn push(&mut self, r: Reg) {
        self.code.push(0x50 + r as u8);
    }

    /// `pop r` (native width).
    pub fn pop(&mut self, r: Reg) {
        self.code.push(0x58 + r as u8);
    }

    /// `pushf` (pushfd / pushfq).
    pub fn pushf(&mut self) {
        self.code.push(0x9c);
    }

    /// `mov r32, cr<n>` (n = 0 or 4).
    pub fn mov_from_cr(&mut self, dst: Reg, cr: u8) {
        self.code.extend_from_slice(&[0x0f, 0x20]);
        self.modrm_reg(cr, dst);
    }

    /// `mov r32, sreg` (zero-extended).
    pub fn mov_from_sreg(&mut self, dst: Reg, s: Sreg) {
        self.code.push(0x8c);
        self.modrm_reg(s as u8, dst);
    }

    /// `mov sreg, r16` (loads the segment register from a GDT selector).
    pub fn mov_to_sreg(&mut self, s: Sreg, src: Reg) {
        self.code.push(0x8e);
        self.modrm_reg(s as u8, src);
    }

    /// `sgdt [base + disp]`.
    pub fn sgdt(&mut self, base: Reg, disp: i32) {
        self.code.extend_from_slice(&[0x0f, 0x01]);
        self.modrm_mem(0, base, disp);
    }

    /// `rdmsr` (ecx = MSR; result in edx:eax).
    pub fn rdmsr(&mut self) {
        self.code.extend_from_slice(&[0x0f, 0x32]);
    }

    /// `wrmsr` (ecx = MSR; value from edx:eax).
    pub fn wrmsr(&mut self) {
        self.code.extend_from_slice(&[0x0f, 0x30]);
    }

    /// `cld`.
    pub fn cld(&mut self) {
        self.code.push(0xfc);
    }

    /// `cli`.
    pub fn cli(&mut self) {
        self.code.push(0xfa);
    }

    /// `hlt`.
    pub fn hlt(&mut self) {
        self.code.push(0xf4);
    }

    /// `ud2`.
    pub fn ud2(&mut self) {
        self.code.extend_from_slice(&[0x0f, 0x0b]);
    }

    /// `repe cmpsb` (compares the bytes at `esi` with those at `edi`, `ecx` of them).
    pub fn repe_cmpsb(&mut self) {
        self.code.extend_from_slice(&[0xf3, 0xa6]);
    }

    /// `out imm8, al`.
    pub fn out8(&mut self, port: u8) {
        self.code.extend_from_slice(&[0xe6, port]);
    }

    /// `out imm8, eax`.
    pub fn out32(&mut self, port: u8) {
        self.code.extend_from_slice(&[0xe7, port]);
    }

    /// `mov al, imm8`.
    pub fn mov_al(&mut self, v: u8) {
        self.code.extend_from_slice(&[0xb0, v]);
    }

    fn rel32_to(&mut self, target: Label) {
        self.fixups.push((self.code.len(), target));
        self.imm32(0);
    }

    /// `jcc rel32`.
    pub fn jcc(&mut self, cond: Cond, target: Label) {
        self.code.extend_from_slice(&[0x0f, 0x80 | cond as u8]);
        self.rel32_to(target);
    }

    /// `jmp rel32`.
    pub fn jmp(&mut self, target: Label) {
        self.code.push(0xe9);
        self.rel32_to(target);
    }

    /// `call rel32`.
    pub fn call(&mut self, target: Label) {
        self.code.push(0xe8);
        self.rel32_to(target);
    }

    /// Resolves every label and returns the code. Panics on an unbound label (a bug in the
    /// kernel generator, never input-dependent).
    pub fn finish(mut self) -> Vec<u8> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label.0].expect("jump to an unbound label");
            let rel = target as i64 - (at as i64 + 4);
            let rel = i32::try_from(rel).expect("jump out of rel32 range");
            self.code[at..at + 4].copy_from_slice(&rel.to_le_bytes());
        }
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reference_instructions() {
        let mut a = Asm::new(Mode::Bits32, 0x10_0000);
        a.mov_imm(Reg::Ax, 0x1234_5678);
        a.load32(Reg::Cx, Reg::Bx, 8);
        a.load32(Reg::Dx, Reg::Sp, 4);
        a.cmp_imm(Reg::Si, 0x20);
        a.out32(0xf4);
        a.mov_from_cr(Reg::Ax, 0);
        a.mov_from_sreg(Reg::Ax, Sreg::Cs);
        let code = a.finish();
        assert_eq!(
            code,
            [
                0xb8, 0x78, 0x56, 0x34, 0x12, // mov eax, 0x12345678
                0x8b, 0x8b, 8, 0, 0, 0, // mov ecx, [ebx+8]
                0x8b, 0x94, 0x24, 4, 0, 0, 0, // mov edx, [esp+4]
                0x81, 0xfe, 0x20, 0, 0, 0, // cmp esi, 0x20
                0xe7, 0xf4, // out 0xf4, eax
                0x0f, 0x20, 0xc0, // mov eax, cr0
                0x8c, 0xc8, // mov eax, cs
            ]
        );
    }

    #[test]
    fn resolves_forward_and_backward_jumps() {
        let mut a = Asm::new(Mode::Bits64, 0);
        let top = a.label();
        let end = a.label();
        a.bind(top);
        a.jcc(Cond::E, end);
        a.jmp(top);
        a.bind(end);
        a.load64(Reg::Ax, Reg::Si, 0x228);
        let code = a.finish();
        assert_eq!(&code[..6], &[0x0f, 0x84, 5, 0, 0, 0]);
        assert_eq!(&code[6..11], &[0xe9, 0xf5, 0xff, 0xff, 0xff]);
        assert_eq!(&code[11..], &[0x48, 0x8b, 0x86, 0x28, 0x02, 0, 0]);
    }
}
