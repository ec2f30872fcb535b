# xendm test kernel: Multiboot version 1 (ELF32, entered in 32-bit protected
# mode with EAX = 0x2BADB002 and EBX = the Multiboot information structure;
# Multiboot specification 0.6.96 sections 3.1-3.3).
#
# It checks what the loader gave it: the magic, the MBI flags it needs
# (CMDLINE, MODS, MMAP), a memory map with RAM at 1 MiB and matching
# mem_lower/mem_upper, the command line protocol of lib.inc, and the FNV-1a
# hash of every module; then prints KERNEL-RESULT and powers off.

    .set MB_MAGIC, 0x1badb002
    .set MB_FLAGS, 0x00000002       # bit 1: memory information wanted

    .section .multiboot, "a"
    .p2align 2
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .include "lib.inc"

    .text
    .globl _start
_start:
    cli
    cld
    mov %eax, %esi
    mov %ebx, %ebp
    # the loader may not have cleared .bss (the stack lives there too)
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $stack_top, %esp
    mov %esi, boot_eax
    mov %ebp, boot_ebx
    call serial_init
    print "KERNEL-INFO: multiboot test kernel\n"
    mov boot_eax, %eax
    cmp $0x2badb002, %eax
    je 1f
    print_hex "KERNEL-INFO: eax=", %eax
    print "\n"
    fail "bad multiboot magic in EAX"
1:  mov boot_ebx, %ebx
    print_hex "KERNEL-INFO: mbi=", %ebx
    print_hex " flags=", (%ebx)
    print_hex " mem_lower=", 4(%ebx)
    print_hex " mem_upper=", 8(%ebx)
    print "\n"
    mov (%ebx), %eax
    test $0x04, %eax
    jnz 2f
    fail "MBI flags lack CMDLINE"
2:  test $0x08, %eax
    jnz 3f
    fail "MBI flags lack MODS"
3:  test $0x40, %eax
    jnz 4f
    fail "MBI flags lack MMAP"
4:  test $0x01, %eax
    jnz 5f
    fail "MBI flags lack MEM"
5:
    # ---- memory information -------------------------------------------
    cmpl $0, 4(%ebx)
    jne 6f
    fail "mem_lower is 0"
6:  cmpl $1024, 8(%ebx)
    jae 7f
    fail "mem_upper is below 1 MiB"
7:  mov 44(%ebx), %ecx          # mmap_length
    mov 48(%ebx), %esi          # mmap_addr
    print_hex "KERNEL-INFO: mmap_addr=", %esi
    print_hex " mmap_length=", %ecx
    print "\n"
    test %ecx, %ecx
    jnz 8f
    fail "empty memory map"
8:  add %esi, %ecx              # ECX = end of the map
    xor %edi, %edi              # EDI = 1 once RAM at 1 MiB is seen
9:  cmp %ecx, %esi
    jae 11f
    mov (%esi), %edx            # size of this entry (not counting itself)
    cmp $20, %edx
    jb 10f
    print_hex "KERNEL-INFO: e820 ", 8(%esi)
    print_hex ":", 4(%esi)
    print_hex " len ", 16(%esi)
    print_hex ":", 12(%esi)
    print_hex " type ", 20(%esi)
    print "\n"
    cmpl $1, 20(%esi)
    jne 12f
    cmpl $0, 8(%esi)
    jne 12f
    cmpl $0x100000, 4(%esi)
    ja 12f
    mov 4(%esi), %eax
    add 12(%esi), %eax
    cmp $0x100000, %eax
    jbe 12f
    mov $1, %edi
    # mem_upper must agree with this entry (end - 1 MiB, KiB), unless the
    # entry reaches 4 GiB
    sub $0x100000, %eax
    shr $10, %eax
    cmp 8(%ebx), %eax
    je 12f
    cmpl $0, 16(%esi)
    jne 12f
    print_hex "KERNEL-INFO: expected mem_upper=", %eax
    print "\n"
    fail "mem_upper disagrees with the memory map"
12: lea 4(%esi,%edx), %esi
    jmp 9b
10: fail "memory map entry size below 20"
11: test %edi, %edi
    jnz 13f
    fail "no RAM at 1 MiB in the memory map"
13:
    # ---- command line -------------------------------------------------
    mov 16(%ebx), %esi
    test %esi, %esi
    jnz 14f
    fail "null command line"
14: call check_cmdline

    # ---- modules ------------------------------------------------------
    mov 20(%ebx), %eax          # mods_count
    print_hex "KERNEL-INFO: mods_count=", %eax
    print "\n"
    cmp expect_mods, %eax
    je 15f
    fail "module count differs from xkt.mods="
15: mov 24(%ebx), %ebp          # mods_addr
    xor %eax, %eax
16: cmp 20(%ebx), %eax
    jae 17f
    mov (%ebp), %esi            # mod_start
    mov 4(%ebp), %ecx           # mod_end
    sub %esi, %ecx
    jae 18f
    fail "module ends before it starts"
18: print_hex "KERNEL-INFO: mod", %eax
    print_hex " start=", %esi
    print_hex " size=", %ecx
    print " cmdline="
    push %esi
    push %ecx
    mov 8(%ebp), %esi
    mov $256, %ecx
    test %esi, %esi
    jz 19f
    call puts_max
19: pop %ecx
    pop %esi
    mov 16(%ebx), %edi
    call check_module
    add $16, %ebp
    inc %eax
    jmp 16b
17: jmp pass


    .section .bss
boot_eax: .long 0
boot_ebx: .long 0
