# xendm test kernel: Xen PVH entry (ELF with a XEN_ELFNOTE_PHYS32_ENTRY
# note; entered in 32-bit flat protected mode, paging off, with EBX = the
# physical address of struct hvm_start_info; xen/include/public/arch-x86/
# hvm/start_info.h and docs/misc/pvh.pandoc).
#
# It checks: the start_info magic and version (>= 1), a memory map with RAM
# at 1 MiB, an RSDP address that points at a checksummed "RSD PTR ", the
# command line protocol of lib.inc, and the FNV-1a hash of every module;
# then prints KERNEL-RESULT and powers off. It has no Multiboot header, so a
# QEMU-style loader takes its PVH path.

    .set XEN_ELFNOTE_PHYS32_ENTRY, 18

    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                         # namesz ("Xen\0")
    .long 4                         # descsz
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long _start                    # 32-bit physical entry point

    .include "lib.inc"

    .text
    .globl _start
_start:
    cli
    cld
    mov %ebx, %ebp
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $stack_top, %esp
    mov %ebp, %ebx
    call serial_init
    print "KERNEL-INFO: pvh test kernel\n"
    print_hex "KERNEL-INFO: start_info=", %ebx
    print "\n"
    cmpl $0x336ec578, (%ebx)
    je 1f
    fail "bad hvm_start_info magic"
1:  print_hex "KERNEL-INFO: version=", 4(%ebx)
    print_hex " flags=", 8(%ebx)
    print_hex " nr_modules=", 12(%ebx)
    print_hex " rsdp=", 32(%ebx)
    print_hex " memmap=", 40(%ebx)
    print_hex " entries=", 48(%ebx)
    print "\n"
    cmpl $1, 4(%ebx)
    jae 2f
    fail "hvm_start_info version below 1 (no memory map)"
2:
    # ---- memory map -----------------------------------------------------
    mov 40(%ebx), %esi          # memmap_paddr (low half)
    mov 48(%ebx), %ecx          # memmap_entries
    test %ecx, %ecx
    jnz 3f
    fail "empty memory map"
3:  cmp $1024, %ecx
    jbe 4f
    fail "absurd memmap_entries"
4:  xor %edi, %edi
5:  print_hex "KERNEL-INFO: e820 ", 4(%esi)
    print_hex ":", 0(%esi)
    print_hex " len ", 12(%esi)
    print_hex ":", 8(%esi)
    print_hex " type ", 16(%esi)
    print "\n"
    cmpl $1, 16(%esi)
    jne 6f
    cmpl $0, 4(%esi)
    jne 6f
    cmpl $0x100000, (%esi)
    ja 6f
    mov (%esi), %eax
    add 8(%esi), %eax
    jc 7f
    cmp $0x100000, %eax
    jbe 6f
7:  mov $1, %edi
6:  add $24, %esi
    dec %ecx
    jnz 5b
    test %edi, %edi
    jnz 8f
    fail "no RAM at 1 MiB in the memory map"
8:
    # ---- RSDP -----------------------------------------------------------
    mov 32(%ebx), %esi
    test %esi, %esi
    jnz 9f
    fail "rsdp_paddr is 0"
9:  cmpl $0x20445352, (%esi)    # "RSD "
    jne 10f
    cmpl $0x20525450, 4(%esi)   # "PTR "
    jne 10f
    xor %eax, %eax
    mov $20, %ecx
11: add (%esi), %al
    inc %esi
    loop 11b
    test %al, %al
    jz 12f
10: fail "rsdp_paddr does not point at a valid RSDP"
12:
    # ---- command line ---------------------------------------------------
    mov 24(%ebx), %esi
    test %esi, %esi
    jnz 13f
    fail "cmdline_paddr is 0"
13: call check_cmdline

    # ---- modules --------------------------------------------------------
    mov 12(%ebx), %eax
    cmp expect_mods, %eax
    je 14f
    fail "module count differs from xkt.mods="
14: mov 16(%ebx), %ebp          # modlist_paddr
    xor %eax, %eax
15: cmp 12(%ebx), %eax
    jae 16f
    mov (%ebp), %esi            # paddr
    mov 8(%ebp), %ecx           # size
    print_hex "KERNEL-INFO: mod", %eax
    print_hex " start=", %esi
    print_hex " size=", %ecx
    mov 24(%ebx), %edi
    call check_module
    add $32, %ebp
    inc %eax
    jmp 15b
16: jmp pass

