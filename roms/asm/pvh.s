# xendm pvh: boots an ELF kernel through its Xen PVH entry point
# (XEN_ELFNOTE_PHYS32_ENTRY). The device model has already loaded the ELF
# segments into guest RAM; fw_cfg carries, with QEMU's item layout:
#   KERNEL_ENTRY             the 32-bit physical PVH entry point
#   CMDLINE_SIZE/DATA        the command line
#   INITRD_ADDR/SIZE/DATA    an optional initrd, passed as module 0
# The ROM builds the hvm_start_info structure (Xen public
# arch-x86/hvm/start_info.h, version 1) with the E820 memory map, the ACPI
# RSDP address, the command line and the module list, and enters the kernel
# as xen/docs/misc/pvh.pandoc describes: 32-bit flat protected mode, paging
# off, interrupts off, EBX = physical address of hvm_start_info.
#
# Data layout (fixed low RAM, free while the BIOS boots; none of it overlaps
# the BIOS stack at 0x7000 and below, the BDA or the IVT):
#   0x0500  hvm_start_info (56 bytes)
#   0x0540  hvm_modlist_entry[1] (32 bytes)
#   0x0600  hvm_memmap_table_entry[128] (24 bytes each, up to 0x1200)
#   0x1200  command line buffer (4 KiB, up to 0x2200)
#
# Differences from QEMU's pvh.bin: it validates the RSDP checksum while
# searching, truncates (with a log line) command lines longer than its
# buffer, falls back to port I/O when fw_cfg has no DMA, and logs on 0xE9.

    .include "common.inc"

    rom_header 4, "xendm PVH loader (fw_cfg)"

    .set START_INFO,  0x0500
    .set MODLIST,     0x0540
    .set MEMMAP,      0x0600
    .set MEMMAP_MAX,  128
    .set CMDLINE,     0x1200
    .set CMDLINE_MAX, 0x1000

    .set SI_MAGIC,          0
    .set SI_VERSION,        4
    .set SI_FLAGS,          8
    .set SI_NR_MODULES,     12
    .set SI_MODLIST_PADDR,  16
    .set SI_CMDLINE_PADDR,  24
    .set SI_RSDP_PADDR,     32
    .set SI_MEMMAP_PADDR,   40
    .set SI_MEMMAP_ENTRIES, 48
    .set SI_SIZE,           56
    .set START_INFO_MAGIC,  0x336ec578

    .set L_COUNT,  F_USER + 0
    .set L_ENTRY,  F_USER + 4
    .set L_SIZE,   F_USER + 8
    .set L_ADDR,   F_USER + 12

    .text
bev:
    rom_enter
    msg "xendm-rom pvh: start\n"
    call cfg_probe
    jc rom_return

    # ---- clear start_info and the module list (ES = 0) -----------------
    xor %ax, %ax
    mov %ax, %es
    mov $START_INFO, %di
    mov $(MEMMAP - START_INFO), %cx
    rep stosb
    movl $START_INFO_MAGIC, %es:START_INFO+SI_MAGIC
    movl $1, %es:START_INFO+SI_VERSION

    # ---- memory map -----------------------------------------------------
    mov $MEMMAP, %di
    movl $0, L_COUNT(%bp)
    xor %ebx, %ebx
1:  cmpl $MEMMAP_MAX, L_COUNT(%bp)
    jae 2f
    call e820_next
    jc 2f
    movl $0, %es:20(%di)        # reserved field of hvm_memmap_table_entry
    add $24, %di
    incl L_COUNT(%bp)
    test %ebx, %ebx
    jnz 1b
2:  mov L_COUNT(%bp), %eax
    msg_hex "xendm-rom pvh: E820 entries ", %eax
    mov %eax, %es:START_INFO+SI_MEMMAP_ENTRIES
    movl $MEMMAP, %es:START_INFO+SI_MEMMAP_PADDR

    # ---- ACPI RSDP ------------------------------------------------------
    # ACPI 6.x section 5.2.5.1: the first KiB of the EBDA, then
    # 0xE0000-0xFFFFF, on 16-byte boundaries; the checksum must match.
    xor %ax, %ax
    mov %ax, %fs
    mov %fs:0x40e, %ax          # EBDA segment from the BDA
    test %ax, %ax
    jz 3f
    mov %ax, %fs
    mov $64, %cx                # 64 paragraphs = 1 KiB
    call rsdp_scan
    jnc 4f
3:  mov $0xe000, %ax
    mov %ax, %fs
    mov $0x2000, %cx            # 0xE0000..0xFFFFF = 0x2000 paragraphs
    call rsdp_scan
    jc 5f
4:  xor %eax, %eax
    mov %fs, %ax
    shl $4, %eax
    mov %eax, %es:START_INFO+SI_RSDP_PADDR
    msg_hex "xendm-rom pvh: RSDP at ", %eax
    jmp 6f
5:  msg "xendm-rom pvh: no ACPI RSDP found\n"
6:
    # ---- command line ---------------------------------------------------
    mov $FW_CFG_CMDLINE_SIZE, %ax
    call cfg_read_u32
    test %eax, %eax
    jz 7f
    cmp $CMDLINE_MAX, %eax
    jbe 8f
    msg_hex "xendm-rom pvh: command line truncated, size ", %eax
    mov $CMDLINE_MAX, %eax
8:  mov %eax, %ecx
    mov $CMDLINE, %edi
    mov $FW_CFG_CMDLINE_DATA, %ax
    call cfg_read_blob
    jc rom_return
    xor %ax, %ax
    mov %ax, %es
    mov %cx, %di
    movb $0, %es:CMDLINE-1(%di) # always NUL-terminated
    movl $CMDLINE, %es:START_INFO+SI_CMDLINE_PADDR
7:
    # ---- initrd as module 0 --------------------------------------------
    mov $FW_CFG_INITRD_SIZE, %ax
    call cfg_read_u32
    mov %eax, L_SIZE(%bp)
    test %eax, %eax
    jz 9f
    mov $FW_CFG_INITRD_ADDR, %ax
    call cfg_read_u32
    mov %eax, L_ADDR(%bp)
    msg_hex "xendm-rom pvh: initrd at ", L_ADDR(%bp)
    mov L_ADDR(%bp), %edi
    mov L_SIZE(%bp), %ecx
    mov $FW_CFG_INITRD_DATA, %ax
    call cfg_read_blob
    jc rom_return
    mov L_ADDR(%bp), %eax
    mov %eax, %es:MODLIST+0     # paddr (u64)
    mov L_SIZE(%bp), %eax
    mov %eax, %es:MODLIST+8     # size (u64)
    movl $1, %es:START_INFO+SI_NR_MODULES
    movl $MODLIST, %es:START_INFO+SI_MODLIST_PADDR
9:
    # ---- entry ----------------------------------------------------------
    mov $FW_CFG_KERNEL_ENTRY, %ax
    call cfg_read_u32
    mov %eax, L_ENTRY(%bp)
    test %eax, %eax
    jz bad_entry
    msg_hex "xendm-rom pvh: entry at ", L_ENTRY(%bp)
    call enable_a20
    xor %eax, %eax
    mov $START_INFO, %ebx
    mov L_ENTRY(%bp), %ecx
    jmp boot32

bad_entry:
    msg "xendm-rom pvh: no KERNEL_ENTRY\n"
    jmp rom_return

# rsdp_scan: look for a valid RSDP at FS:0 for CX paragraphs, advancing FS.
# CF clear: found at FS:0. Clobbers AX, CX, DX, SI.
# (The signature is compared as two immediates so that this ROM never holds
# the 8-byte string itself, which could be found by the same search.)
rsdp_scan:
1:  cmpl $0x20445352, %fs:0     # "RSD "
    jne 3f
    cmpl $0x20525450, %fs:4     # "PTR "
    jne 3f
    xor %si, %si
    xor %dl, %dl
2:  add %fs:(%si), %dl          # ACPI 1.0 checksum over the first 20 bytes
    inc %si
    cmp $20, %si
    jb 2b
    test %dl, %dl
    jnz 3f
    clc
    ret
3:  mov %fs, %ax
    inc %ax
    mov %ax, %fs
    loop 1b
    stc
    ret
