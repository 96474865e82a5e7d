//! Kernel file formats written from raw code bytes: a PVH ELF (ELF64 with a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note), a bare 32-bit ELF header (to test rejection), and a
//! bzImage (setup sectors with a 2.12+ "HdrS" header, then the protected-mode part that the
//! VMM loads at 1 MiB).
//!
//! Field offsets follow the ELF-64 object file format and Linux's
//! `Documentation/x86/boot.rst` (setup header at 0x1f1 of the file).

/// Where both formats load their protected-mode part (CONFIG_PHYSICAL_START, `code32_start`).
pub const LOAD_ADDR: u32 = 0x10_0000;
/// The PVH note type `XEN_ELFNOTE_PHYS32_ENTRY`.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// File offset of the loadable segment in the ELF files we write.
const ELF_SEGMENT_OFFSET: usize = 0x1000;

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A PVH ELF image description.
#[derive(Clone, Debug)]
pub struct PvhElf {
    /// Bytes loaded at [`LOAD_ADDR`].
    pub payload: Vec<u8>,
    /// Zeroed bytes after the payload (stack, scratch), reported in `p_memsz`.
    pub bss: u32,
    /// The 32-bit entry point written into the PVH note.
    pub entry: u32,
    /// Whether to write the PVH note at all (false: an ELF the VMM must reject).
    pub pvh_note: bool,
}

impl PvhElf {
    /// The ELF file bytes: header, two program headers (PT_LOAD, PT_NOTE), the note, and the
    /// segment at file offset 0x1000.
    pub fn to_bytes(&self) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let phnum: u16 = if self.pvh_note { 2 } else { 1 };
        let note_off = EHDR + PHDR * phnum as usize;
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&self.entry.to_le_bytes());

        let mut f = vec![0u8; ELF_SEGMENT_OFFSET + self.payload.len()];
        put(&mut f, 0, b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little endian
        f[6] = 1; // EV_CURRENT
        put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut f, 18, &0x3eu16.to_le_bytes()); // EM_X86_64
        put(&mut f, 20, &1u32.to_le_bytes());
        put(&mut f, 24, &u64::from(self.entry).to_le_bytes()); // e_entry
        put(&mut f, 32, &(EHDR as u64).to_le_bytes()); // e_phoff
        put(&mut f, 52, &(EHDR as u16).to_le_bytes()); // e_ehsize
        put(&mut f, 54, &(PHDR as u16).to_le_bytes()); // e_phentsize
        put(&mut f, 56, &phnum.to_le_bytes());
        put(&mut f, 58, &64u16.to_le_bytes()); // e_shentsize (no sections)

        let load = EHDR;
        put(&mut f, load, &1u32.to_le_bytes()); // PT_LOAD
        put(&mut f, load + 4, &7u32.to_le_bytes()); // RWX
        put(&mut f, load + 8, &(ELF_SEGMENT_OFFSET as u64).to_le_bytes());
        put(&mut f, load + 16, &u64::from(LOAD_ADDR).to_le_bytes()); // vaddr
        put(&mut f, load + 24, &u64::from(LOAD_ADDR).to_le_bytes()); // paddr
        put(
            &mut f,
            load + 32,
            &(self.payload.len() as u64).to_le_bytes(),
        );
        let memsz = self.payload.len() as u64 + u64::from(self.bss);
        put(&mut f, load + 40, &memsz.to_le_bytes());
        put(&mut f, load + 48, &0x1000u64.to_le_bytes());
        if self.pvh_note {
            let ph = EHDR + PHDR;
            put(&mut f, ph, &4u32.to_le_bytes()); // PT_NOTE
            put(&mut f, ph + 4, &4u32.to_le_bytes());
            put(&mut f, ph + 8, &(note_off as u64).to_le_bytes());
            put(&mut f, ph + 32, &(note.len() as u64).to_le_bytes());
            put(&mut f, ph + 40, &(note.len() as u64).to_le_bytes());
            put(&mut f, ph + 48, &4u64.to_le_bytes());
            put(&mut f, note_off, &note);
        }
        put(&mut f, ELF_SEGMENT_OFFSET, &self.payload);
        f
    }
}

/// A minimal 32-bit i386 ELF executable header (no segments): a kernel the VMM must refuse.
pub fn elf32_header() -> Vec<u8> {
    let mut f = vec![0u8; 52];
    put(&mut f, 0, b"\x7fELF");
    f[4] = 1; // ELFCLASS32
    f[5] = 1;
    f[6] = 1;
    put(&mut f, 16, &2u16.to_le_bytes());
    put(&mut f, 18, &3u16.to_le_bytes()); // EM_386
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &LOAD_ADDR.to_le_bytes());
    put(&mut f, 40, &52u16.to_le_bytes());
    f
}

/// Setup-header field offsets inside the bzImage file (and inside `boot_params`).
pub mod hdr {
    /// `setup_sects` (u8).
    pub const SETUP_SECTS: usize = 0x1f1;
    /// `syssize` (u32, 16-byte paragraphs of the protected-mode part).
    pub const SYSSIZE: usize = 0x1f4;
    /// `boot_flag` (u16, 0xaa55).
    pub const BOOT_FLAG: usize = 0x1fe;
    /// `header` ("HdrS").
    pub const HEADER: usize = 0x202;
    /// `version` (u16).
    pub const VERSION: usize = 0x206;
    /// `type_of_loader` (u8).
    pub const TYPE_OF_LOADER: usize = 0x210;
    /// `loadflags` (u8).
    pub const LOADFLAGS: usize = 0x211;
    /// `code32_start` (u32).
    pub const CODE32_START: usize = 0x214;
    /// `ramdisk_image` (u32).
    pub const RAMDISK_IMAGE: usize = 0x218;
    /// `ramdisk_size` (u32).
    pub const RAMDISK_SIZE: usize = 0x21c;
    /// `cmd_line_ptr` (u32).
    pub const CMD_LINE_PTR: usize = 0x228;
    /// `initrd_addr_max` (u32).
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    /// `kernel_alignment` (u32).
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    /// `xloadflags` (u16).
    pub const XLOADFLAGS: usize = 0x236;
    /// `cmdline_size` (u32).
    pub const CMDLINE_SIZE: usize = 0x238;
    /// `pref_address` (u64).
    pub const PREF_ADDRESS: usize = 0x258;
    /// `init_size` (u32).
    pub const INIT_SIZE: usize = 0x260;
}

/// `boot_params` offsets outside the setup header.
pub mod zero_page {
    /// `ext_ramdisk_image` (u32, bits 32..63).
    pub const EXT_RAMDISK_IMAGE: usize = 0xc0;
    /// `ext_ramdisk_size` (u32).
    pub const EXT_RAMDISK_SIZE: usize = 0xc4;
    /// `ext_cmd_line_ptr` (u32).
    pub const EXT_CMD_LINE_PTR: usize = 0xc8;
    /// `e820_entries` (u8).
    pub const E820_ENTRIES: usize = 0x1e8;
    /// `e820_table` (20-byte entries).
    pub const E820_TABLE: usize = 0x2d0;
}

/// A bzImage description.
#[derive(Clone, Debug)]
pub struct BzImage {
    /// The protected-mode part, loaded at [`LOAD_ADDR`]; the 64-bit entry is at offset 0x200.
    pub protected: Vec<u8>,
    /// Boot protocol version (0x020f for 2.15).
    pub version: u16,
    /// `xloadflags` (bit 0: XLF_KERNEL_64).
    pub xloadflags: u16,
    /// Number of 512-byte setup sectors after the boot sector.
    pub setup_sects: u8,
}

/// XLF_KERNEL_64: the kernel has the 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 1;
/// Boot protocol 2.15 (Linux 5.5+).
pub const PROTOCOL_2_15: u16 = 0x020f;

impl BzImage {
    /// A bzImage with the current protocol and a 64-bit entry around `protected`.
    pub fn new(protected: Vec<u8>) -> Self {
        BzImage {
            protected,
            version: PROTOCOL_2_15,
            xloadflags: XLF_KERNEL_64,
            setup_sects: 1,
        }
    }

    /// The file bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let setup_len = (usize::from(self.setup_sects) + 1) * 512;
        let mut f = vec![0u8; setup_len];
        f[hdr::SETUP_SECTS] = self.setup_sects;
        let paragraphs = self.protected.len().div_ceil(16) as u32;
        put(&mut f, hdr::SYSSIZE, &paragraphs.to_le_bytes());
        put(&mut f, hdr::BOOT_FLAG, &0xaa55u16.to_le_bytes());
        put(&mut f, 0x200, &[0xeb, 0x66]); // jmp to the (absent) real-mode setup code
        put(&mut f, hdr::HEADER, b"HdrS");
        put(&mut f, hdr::VERSION, &self.version.to_le_bytes());
        f[hdr::LOADFLAGS] = 0x01; // LOADED_HIGH
        put(&mut f, hdr::CODE32_START, &LOAD_ADDR.to_le_bytes());
        put(&mut f, hdr::INITRD_ADDR_MAX, &0x7fff_ffffu32.to_le_bytes());
        put(&mut f, hdr::KERNEL_ALIGNMENT, &0x20_0000u32.to_le_bytes());
        put(&mut f, hdr::XLOADFLAGS, &self.xloadflags.to_le_bytes());
        put(&mut f, hdr::CMDLINE_SIZE, &0x7ffu32.to_le_bytes());
        put(
            &mut f,
            hdr::PREF_ADDRESS,
            &u64::from(LOAD_ADDR).to_le_bytes(),
        );
        let init_size = (self.protected.len() as u32 + 0x1_0000).next_multiple_of(0x1000);
        put(&mut f, hdr::INIT_SIZE, &init_size.to_le_bytes());
        let mut protected = self.protected.clone();
        protected.resize(paragraphs as usize * 16, 0);
        f.extend_from_slice(&protected);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_elf_has_note_and_segment_where_declared() {
        let elf = PvhElf {
            payload: vec![0xf4; 10],
            bss: 0x100,
            entry: LOAD_ADDR,
            pvh_note: true,
        }
        .to_bytes();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([elf[56], elf[57]]), 2);
        let note_off = 64 + 2 * 56;
        assert_eq!(&elf[note_off + 12..note_off + 16], b"Xen\0");
        assert_eq!(
            u32::from_le_bytes(elf[note_off + 16..note_off + 20].try_into().unwrap()),
            LOAD_ADDR
        );
        assert_eq!(elf[ELF_SEGMENT_OFFSET], 0xf4);
    }

    #[test]
    fn bzimage_header_fields_land_at_documented_offsets() {
        let bz = BzImage::new(vec![0x90; 0x300]).to_bytes();
        assert_eq!(&bz[hdr::HEADER..hdr::HEADER + 4], b"HdrS");
        assert_eq!(bz.len(), 1024 + 0x300);
        assert_eq!(bz[hdr::SETUP_SECTS], 1);
        assert_eq!(
            u16::from_le_bytes([bz[hdr::XLOADFLAGS], bz[hdr::XLOADFLAGS + 1]]),
            1
        );
    }
}
