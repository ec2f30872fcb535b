# xendm multiboot_dma: boots a Multiboot (version 1) kernel that the device
# model prepared in fw_cfg, using the item layout of QEMU's multiboot loader:
#   INITRD_ADDR/SIZE/DATA  the Multiboot information structure (MBI), whose
#                          module list, command lines and mmap_addr the
#                          device model already filled in
#   KERNEL_ADDR/SIZE/DATA  the kernel image followed by modules and strings
#   KERNEL_ENTRY           the kernel entry point
# The ROM completes the MBI with what only the BIOS knows (mem_lower from
# INT 12h, the INT 15h E820 map at mmap_addr, mem_upper, mmap_length) and
# enters the kernel as the Multiboot specification 0.6.96 section 3.2
# requires: 32-bit flat protected mode, paging off, interrupts off,
# EAX = 0x2BADB002, EBX = physical address of the MBI.
#
# Differences from QEMU's multiboot_dma.bin: it validates the MBI address,
# bounds the E820 loop (it never writes over the MBI), falls back to port I/O
# when fw_cfg has no DMA, and logs its progress on port 0xE9.

    .include "common.inc"

    rom_header 4, "xendm multiboot loader (fw_cfg)"

    .set L_MBI,        F_USER + 0
    .set L_MBI_SIZE,   F_USER + 4
    .set L_MMAP,       F_USER + 8
    .set L_MAX_ENT,    F_USER + 12
    .set L_COUNT,      F_USER + 16
    .set L_MEM_UPPER,  F_USER + 20
    .set L_KERNEL,     F_USER + 24
    .set L_ENTRY,      F_USER + 28

    # MBI field offsets (Multiboot 0.6.96, section 3.3)
    .set MBI_MEM_LOWER,   4
    .set MBI_MEM_UPPER,   8
    .set MBI_MMAP_LENGTH, 44
    .set MBI_MMAP_ADDR,   48
    .set MBI_MIN_SIZE,    52

    .set MMAP_ENTRY, 24         # u32 size + 20-byte E820 entry
    .set MMAP_MAX,   64
    .set LOW_MEM_END, 0xa0000

    .text
bev:
    rom_enter
    msg "xendm-rom multiboot_dma: start\n"
    call cfg_probe
    jc rom_return

    # ---- the MBI --------------------------------------------------------
    mov $FW_CFG_INITRD_ADDR, %ax
    call cfg_read_u32
    mov %eax, L_MBI(%bp)
    mov $FW_CFG_INITRD_SIZE, %ax
    call cfg_read_u32
    mov %eax, L_MBI_SIZE(%bp)
    msg_hex "xendm-rom multiboot_dma: MBI at ", L_MBI(%bp)
    mov L_MBI_SIZE(%bp), %ecx
    cmp $MBI_MIN_SIZE, %ecx
    jb bad_mbi
    cmp $0x1000, %ecx
    ja bad_mbi
    mov L_MBI(%bp), %eax
    cmp $0x500, %eax
    jb bad_mbi
    add %ecx, %eax
    cmp $LOW_MEM_END, %eax
    ja bad_mbi
    mov L_MBI(%bp), %edi
    mov $FW_CFG_INITRD_DATA, %ax
    call cfg_read_blob
    jc rom_return

    # FS:SI = the MBI
    mov L_MBI(%bp), %eax
    mov %ax, %si
    and $0xf, %si
    shr $4, %eax
    mov %ax, %fs

    # mem_lower: conventional memory in KiB
    push %bp
    int $0x12
    pop %bp
    cli
    movzwl %ax, %eax
    mov %eax, %fs:MBI_MEM_LOWER(%si)

    # ---- memory map -----------------------------------------------------
    # The map goes where the device model asked (mmap_addr), below 640 KiB,
    # and never runs into the MBI when it sits below it.
    mov %fs:MBI_MMAP_ADDR(%si), %eax
    mov %eax, L_MMAP(%bp)
    cmp $0x500, %eax
    jb bad_mmap
    cmp $(LOW_MEM_END - MMAP_ENTRY), %eax
    ja bad_mmap
    movl $MMAP_MAX, L_MAX_ENT(%bp)
    mov L_MBI(%bp), %edx
    sub %eax, %edx              # room below the MBI
    jbe 1f                      # map above the MBI: no limit from it
    mov %edx, %eax
    xor %edx, %edx
    mov $MMAP_ENTRY, %ecx
    div %ecx
    cmp L_MAX_ENT(%bp), %eax
    jae 1f
    mov %eax, L_MAX_ENT(%bp)
1:  mov $LOW_MEM_END, %eax      # room below 640 KiB
    sub L_MMAP(%bp), %eax
    xor %edx, %edx
    mov $MMAP_ENTRY, %ecx
    div %ecx
    cmp L_MAX_ENT(%bp), %eax
    jae 1f
    mov %eax, L_MAX_ENT(%bp)
1:
    mov L_MMAP(%bp), %eax
    mov %ax, %di
    and $0xf, %di
    shr $4, %eax
    mov %ax, %es
    movl $0, L_COUNT(%bp)
    movl $0, L_MEM_UPPER(%bp)
    xor %ebx, %ebx
e820_loop:
    mov L_COUNT(%bp), %eax
    cmp L_MAX_ENT(%bp), %eax
    jae e820_done
    movl $20, %es:(%di)         # Multiboot "size" of the entry that follows
    add $4, %di
    call e820_next
    jc e820_failed
    # RAM containing 1 MiB: mem_upper = its end - 1 MiB, in KiB
    cmpl $1, %es:16(%di)
    jne 2f
    cmpl $0, %es:4(%di)
    jne 2f
    cmpl $0x100000, %es:0(%di)
    ja 2f
    mov %es:0(%di), %eax
    mov %es:4(%di), %edx        # (is 0 here)
    add %es:8(%di), %eax
    adc %es:12(%di), %edx
    jz 3f
    mov $0xffffffff, %eax       # clamp the end to 4 GiB
3:  sub $0x100000, %eax
    jbe 2f
    shr $10, %eax
    cmp L_MEM_UPPER(%bp), %eax
    jbe 2f
    mov %eax, L_MEM_UPPER(%bp)
2:  add $20, %di
    incl L_COUNT(%bp)
    test %ebx, %ebx
    jnz e820_loop
    jmp e820_done
e820_failed:
    sub $4, %di
e820_done:
    mov L_COUNT(%bp), %eax
    msg_hex "xendm-rom multiboot_dma: E820 entries ", %eax
    imul $MMAP_ENTRY, %eax
    mov %eax, %fs:MBI_MMAP_LENGTH(%si)
    mov L_MEM_UPPER(%bp), %eax
    mov %eax, %fs:MBI_MEM_UPPER(%si)

    # ---- kernel ---------------------------------------------------------
    mov $FW_CFG_KERNEL_ADDR, %ax
    call cfg_read_u32
    mov %eax, L_KERNEL(%bp)
    mov %eax, %edi
    mov $FW_CFG_KERNEL_SIZE, %ax
    call cfg_read_u32
    mov %eax, %ecx
    msg_hex "xendm-rom multiboot_dma: kernel at ", %edi
    mov $FW_CFG_KERNEL_DATA, %ax
    call cfg_read_blob
    jc rom_return
    mov $FW_CFG_KERNEL_ENTRY, %ax
    call cfg_read_u32
    mov %eax, L_ENTRY(%bp)
    test %eax, %eax
    jz bad_entry
    msg_hex "xendm-rom multiboot_dma: entry at ", L_ENTRY(%bp)

    call enable_a20
    mov $0x2badb002, %eax
    mov L_MBI(%bp), %ebx
    mov L_ENTRY(%bp), %ecx
    jmp boot32

bad_mbi:
    msg_hex "xendm-rom multiboot_dma: unusable MBI size ", L_MBI_SIZE(%bp)
    jmp rom_return
bad_mmap:
    msg_hex "xendm-rom multiboot_dma: unusable mmap_addr ", L_MMAP(%bp)
    jmp rom_return
bad_entry:
    msg "xendm-rom multiboot_dma: no KERNEL_ENTRY\n"
    jmp rom_return
