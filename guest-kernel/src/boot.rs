//! From QEMU's PVH entry to Rust: 32-bit protected mode without paging, `ebx` = the physical
//! address of the `hvm_start_info`. The assembly clears `.bss`, identity-maps the first 4 GiB
//! with 2 MiB pages (uncached from 2 GiB up, where q35 puts PCI windows, ECAM and the APICs),
//! enters long mode, enables SSE (the prebuilt `core` uses it) and calls [`kmain`](crate::kmain)
//! with the start-info address.

use core::arch::global_asm;

/// Bytes of the boot stack.
pub const STACK_SIZE: usize = 256 * 1024;

/// The first 4 GiB, identity mapped: the end of every address the kernel may touch.
pub const IDENTITY_MAPPED_END: u64 = 4 << 30;

global_asm!(
    // The PVH entry note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), a 64-bit address
    // (QEMU reads a native word from an ELF64 note).
    ".section .note.pvh, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad pvh_start32",
    "",
    ".section .bss.boot, \"aw\", @nobits",
    ".balign 4096",
    "boot_pml4: .skip 4096",
    "boot_pdpt: .skip 4096",
    "boot_pd: .skip 4 * 4096",
    "boot_stack: .skip {stack}",
    "boot_stack_top:",
    "",
    ".section .data.boot, \"aw\"",
    ".balign 16",
    "boot_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff", // 0x08: 64-bit code, DPL 0
    ".quad 0x00cf92000000ffff", // 0x10: data
    "boot_gdt_end:",
    "boot_gdtr:",
    ".word boot_gdt_end - boot_gdt - 1",
    ".quad boot_gdt",
    "",
    ".section .text.boot, \"ax\"",
    ".code32",
    ".global pvh_start32",
    "pvh_start32:",
    "cli",
    "cld",
    "mov esi, ebx",
    // Clear .bss (it holds the page tables and the stack).
    "mov edi, offset __bss_start",
    "mov ecx, offset __bss_end",
    "sub ecx, edi",
    "xor eax, eax",
    "rep stosb",
    // PML4[0] -> PDPT; PDPT[0..4] -> the four page directories.
    "mov eax, offset boot_pdpt",
    "or eax, 3",
    "mov dword ptr [boot_pml4], eax",
    "xor ecx, ecx",
    "2:",
    "mov eax, ecx",
    "shl eax, 12",
    "add eax, offset boot_pd",
    "or eax, 3",
    "mov dword ptr [boot_pdpt + ecx * 8], eax",
    "inc ecx",
    "cmp ecx, 4",
    "jne 2b",
    // 2048 2 MiB pages: present, writable, PS; PCD|PWT from entry 1024 (2 GiB) up.
    "xor ecx, ecx",
    "3:",
    "mov eax, ecx",
    "shl eax, 21",
    "or eax, 0x83",
    "cmp ecx, 1024",
    "jb 4f",
    "or eax, 0x18",
    "4:",
    "mov dword ptr [boot_pd + ecx * 8], eax",
    "inc ecx",
    "cmp ecx, 2048",
    "jne 3b",
    // CR3, then PAE + OSFXSR + OSXMMEXCPT, EFER.LME, then paging with the FPU usable.
    "mov eax, offset boot_pml4",
    "mov cr3, eax",
    "mov eax, cr4",
    "or eax, 0x620",
    "mov cr4, eax",
    "mov ecx, 0xc0000080",
    "rdmsr",
    "or eax, 0x100",
    "wrmsr",
    "mov eax, cr0",
    "and eax, 0xfffffffb", // EM off
    "or eax, 0x80000023",  // PG, NE, MP, PE
    "mov cr0, eax",
    "lgdt [boot_gdtr]",
    // A far return into the 64-bit code segment (32-bit pushes: selector, then offset).
    "mov ecx, 0x08",
    "push ecx",
    "mov eax, offset boot_long_mode",
    "push eax",
    "retf",
    ".code64",
    "boot_long_mode:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "mov fs, ax",
    "mov gs, ax",
    "lea rsp, [rip + boot_stack_top]",
    "fninit",
    "mov edi, esi",
    "call {kmain}",
    "6:",
    "cli",
    "hlt",
    "jmp 6b",
    stack = const STACK_SIZE,
    kmain = sym crate::kmain,
);

/// The PVH start info (`struct hvm_start_info`, version 1) as far as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StartInfo {
    /// `0x336ec578`.
    pub magic: u32,
    /// Structure version.
    pub version: u32,
    /// SIF flags.
    pub flags: u32,
    /// Number of modules.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version 1).
    pub memmap_paddr: u64,
    /// Entries in the memory map.
    pub memmap_entries: u32,
    /// Reserved.
    pub reserved: u32,
}

/// One memory map entry (`struct hvm_memmap_table_entry`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemmapEntry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 = RAM).
    pub kind: u32,
    /// Reserved.
    pub reserved: u32,
}

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// E820 RAM.
pub const E820_RAM: u32 = 1;
/// Longest command line read.
const MAX_CMDLINE: usize = 512;

impl StartInfo {
    /// Reads the start info QEMU left at `paddr`.
    ///
    /// # Safety
    /// `paddr` must be the address the PVH loader passed in `ebx` (identity mapped, and
    /// untouched since).
    pub unsafe fn read(paddr: u64) -> Option<StartInfo> {
        if paddr == 0 || paddr >= IDENTITY_MAPPED_END {
            return None;
        }
        // SAFETY: the caller passes the loader's start-info address, which is mapped; the
        // structure may be unaligned in principle, hence the unaligned read.
        let info = unsafe { (paddr as *const StartInfo).read_unaligned() };
        (info.magic == START_INFO_MAGIC).then_some(info)
    }

    /// The command line (at most 512 bytes, up to its NUL), or "" if none or not UTF-8.
    pub fn cmdline(&self) -> &'static str {
        let p = self.cmdline_paddr;
        if p == 0 || p >= IDENTITY_MAPPED_END - MAX_CMDLINE as u64 {
            return "";
        }
        // SAFETY: the loader placed the command line in low memory, which is identity mapped
        // and never written by the kernel; `MAX_CMDLINE` bytes from it stay below 4 GiB.
        let bytes = unsafe { core::slice::from_raw_parts(p as *const u8, MAX_CMDLINE) };
        let len = bytes.iter().position(|b| *b == 0).unwrap_or(0);
        core::str::from_utf8(&bytes[..len]).unwrap_or("")
    }

    /// Whether the memory map marks `[start, end)` as RAM (one entry covering it).
    pub fn is_ram(&self, start: u64, end: u64) -> bool {
        let n = usize::try_from(self.memmap_entries).unwrap_or(0).min(128);
        if self.version < 1 || self.memmap_paddr == 0 || self.memmap_paddr >= IDENTITY_MAPPED_END {
            return false;
        }
        (0..n).any(|i| {
            // SAFETY: the map has `memmap_entries` entries (bounded to 128) at `memmap_paddr`,
            // in identity-mapped low memory.
            let e = unsafe {
                (self.memmap_paddr as *const MemmapEntry)
                    .add(i)
                    .read_unaligned()
            };
            e.kind == E820_RAM && e.addr <= start && e.addr.saturating_add(e.size) >= end
        })
    }
}
