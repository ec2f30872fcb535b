# xendm linuxboot_dma: boots a Linux bzImage that the device model put in
# fw_cfg, using the item layout of QEMU's x86 Linux loader:
#   SETUP_ADDR/SIZE/DATA   real-mode setup (with the patched boot header)
#   INITRD_ADDR/SIZE/DATA  initrd (address may be re-derived, see below)
#   KERNEL_ADDR/SIZE/DATA  protected-mode kernel
#   CMDLINE_ADDR/SIZE/DATA command line
# then enters the kernel at its 16-bit real-mode entry (Linux
# Documentation/arch/x86/boot.rst, "Running the kernel").
#
# Differences from QEMU's linuxboot_dma.bin: it checks the fw_cfg signature,
# falls back to port I/O ("rep insb" in unreal mode) when fw_cfg has no DMA,
# sanity-checks the addresses it is given (returning to the BIOS instead of
# scribbling over memory), and logs its progress on port 0xE9.

    .include "common.inc"

    rom_header 4, "xendm Linux loader (fw_cfg)"

    .set L_SETUP_ADDR,   F_USER + 0
    .set L_SETUP_SIZE,   F_USER + 4
    .set L_INITRD_ADDR,  F_USER + 8
    .set L_INITRD_SIZE,  F_USER + 12
    .set L_KERNEL_ADDR,  F_USER + 16
    .set L_KERNEL_SIZE,  F_USER + 20
    .set L_CMDLINE_ADDR, F_USER + 24
    .set L_CMDLINE_SIZE, F_USER + 28

    # boot header offsets (relative to the start of the setup code)
    .set HDR_VERSION,         0x206
    .set HDR_RAMDISK_IMAGE,   0x218
    .set HDR_INITRD_ADDR_MAX, 0x22c

    .set LOW_MEM_END, 0xa0000

    .text
bev:
    rom_enter
    msg "xendm-rom linuxboot_dma: start\n"
    call cfg_probe
    jc rom_return
    testb $1, F_FLAGS(%bp)
    jnz 1f
    msg "xendm-rom linuxboot_dma: fw_cfg without DMA, using port I/O\n"
1:
    # ---- setup (real-mode part) -----------------------------------------
    mov $FW_CFG_SETUP_ADDR, %ax
    call cfg_read_u32
    mov %eax, L_SETUP_ADDR(%bp)
    mov $FW_CFG_SETUP_SIZE, %ax
    call cfg_read_u32
    mov %eax, L_SETUP_SIZE(%bp)
    msg_hex "xendm-rom linuxboot_dma: setup at ", L_SETUP_ADDR(%bp)
    # must be a paragraph-aligned area below 640 KiB big enough for the
    # boot header
    mov L_SETUP_ADDR(%bp), %eax
    test $0xf, %al
    jnz bad_setup
    cmp $0x1000, %eax
    jb bad_setup
    mov L_SETUP_SIZE(%bp), %ecx
    cmp $0x400, %ecx
    jb bad_setup
    cmp $LOW_MEM_END, %ecx
    jae bad_setup
    add %ecx, %eax
    cmp $LOW_MEM_END, %eax
    ja bad_setup
    mov L_SETUP_ADDR(%bp), %edi
    mov $FW_CFG_SETUP_DATA, %ax
    call cfg_read_blob
    jc rom_return

    # FS = setup segment, for the boot header
    mov L_SETUP_ADDR(%bp), %eax
    shr $4, %eax
    mov %ax, %fs
    cmpw $0x203, %fs:HDR_VERSION
    jae 1f
    movl $0x37ffffff, %fs:HDR_INITRD_ADDR_MAX
1:
    # ---- initrd ---------------------------------------------------------
    mov $FW_CFG_INITRD_ADDR, %ax
    call cfg_read_u32
    mov %eax, L_INITRD_ADDR(%bp)
    mov $FW_CFG_INITRD_SIZE, %ax
    call cfg_read_u32
    mov %eax, L_INITRD_SIZE(%bp)
    # Keep the device model's address when the initrd ends in the page of
    # initrd_addr_max; otherwise move it just below the top of low RAM as
    # the BIOS reports it (INT 15h E801), the same rule QEMU's ROM applies.
    mov L_INITRD_ADDR(%bp), %eax
    add L_INITRD_SIZE(%bp), %eax
    and $0xfffff000, %eax
    jz initrd_placed
    mov %fs:HDR_INITRD_ADDR_MAX, %edx
    and $0xfffff000, %edx
    jz initrd_placed
    cmp %eax, %edx
    je initrd_placed
    push %bp
    mov $0xe801, %ax
    xor %bx, %bx
    xor %cx, %cx
    xor %dx, %dx
    int $0x15
    pop %bp
    cli
    jc initrd_e801_failed
    mov %cx, %si
    or %dx, %si
    jnz 1f
    mov %ax, %cx
    mov %bx, %dx
1:  test %dx, %dx
    jz 2f
    movzwl %dx, %eax            # 64 KiB blocks above 16 MiB
    add $256, %eax
    shl $16, %eax
    jmp 3f
2:  movzwl %cx, %eax            # KiB between 1 MiB and 16 MiB
    add $1024, %eax
    shl $10, %eax
3:  mov L_INITRD_SIZE(%bp), %ecx
    cmp %ecx, %eax
    jbe initrd_e801_failed
    sub %ecx, %eax
    and $0xfffff000, %eax
    mov %eax, L_INITRD_ADDR(%bp)
    mov %eax, %fs:HDR_RAMDISK_IMAGE
    jmp initrd_placed
initrd_e801_failed:
    msg "xendm-rom linuxboot_dma: E801 unusable, keeping the initrd address\n"
initrd_placed:
    mov L_INITRD_SIZE(%bp), %ecx
    test %ecx, %ecx
    jz 1f
    msg_hex "xendm-rom linuxboot_dma: initrd at ", L_INITRD_ADDR(%bp)
    mov L_INITRD_ADDR(%bp), %edi
    mov $FW_CFG_INITRD_DATA, %ax
    call cfg_read_blob
    jc rom_return
1:
    # ---- protected-mode kernel -----------------------------------------
    mov $FW_CFG_KERNEL_ADDR, %ax
    call cfg_read_u32
    mov %eax, L_KERNEL_ADDR(%bp)
    mov $FW_CFG_KERNEL_SIZE, %ax
    call cfg_read_u32
    mov %eax, L_KERNEL_SIZE(%bp)
    msg_hex "xendm-rom linuxboot_dma: kernel at ", L_KERNEL_ADDR(%bp)
    mov L_KERNEL_ADDR(%bp), %edi
    mov L_KERNEL_SIZE(%bp), %ecx
    mov $FW_CFG_KERNEL_DATA, %ax
    call cfg_read_blob
    jc rom_return

    # ---- command line ---------------------------------------------------
    mov $FW_CFG_CMDLINE_ADDR, %ax
    call cfg_read_u32
    mov %eax, L_CMDLINE_ADDR(%bp)
    mov $FW_CFG_CMDLINE_SIZE, %ax
    call cfg_read_u32
    mov %eax, L_CMDLINE_SIZE(%bp)
    # the stack goes just below the command line, inside the setup segment
    mov L_CMDLINE_ADDR(%bp), %eax
    sub L_SETUP_ADDR(%bp), %eax
    jbe bad_cmdline
    cmp $0x210, %eax
    jb bad_cmdline
    cmp $0x10010, %eax
    ja bad_cmdline
    mov L_CMDLINE_ADDR(%bp), %edi
    mov L_CMDLINE_SIZE(%bp), %ecx
    mov $FW_CFG_CMDLINE_DATA, %ax
    call cfg_read_blob
    jc rom_return

    # ---- enter the kernel ----------------------------------------------
    msg "xendm-rom linuxboot_dma: starting the kernel\n"
    mov L_CMDLINE_ADDR(%bp), %ebx
    sub L_SETUP_ADDR(%bp), %ebx
    sub $16, %ebx
    mov L_SETUP_ADDR(%bp), %eax
    shr $4, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov %ebx, %esp
    add $0x20, %ax
    push %ax                    # CS = setup segment + 0x20
    push $0                     # IP = 0
    xor %ebx, %ebx
    xor %ecx, %ecx
    xor %edx, %edx
    xor %esi, %esi
    xor %edi, %edi
    xor %ebp, %ebp
    lretw

bad_setup:
    msg_hex "xendm-rom linuxboot_dma: unusable setup size ", L_SETUP_SIZE(%bp)
    jmp rom_return
bad_cmdline:
    msg_hex "xendm-rom linuxboot_dma: unusable command line address ", L_CMDLINE_ADDR(%bp)
    jmp rom_return
