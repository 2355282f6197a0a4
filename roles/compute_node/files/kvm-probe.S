/* The compute_node role's KVM boot probe: a 512-byte x86 boot sector that walks the path a Linux kernel takes
 * at boot (real mode -> protected mode -> long mode with paging), prints its progress on COM1 (R, P, L), then does
 * 2^24 rounds of 64-bit arithmetic and prints " VFPROBE-OK" if the result is right.
 *
 * Under working KVM it finishes in milliseconds, under software emulation (TCG) in a fraction of a second. On a
 * host whose /dev/kvm cannot really run guests (nested without VT-x passed through, paravirtual KVM such as
 * kvm_pvm) it stops or crawls after "RPL", as a Linux kernel hangs right after "Probing EDD" there.
 *
 * plugins/module_utils/_kvm_probe.py carries the assembled bytes; tests/unit/plugins/module_utils/test_kvm_probe.py
 * checks they match this source. To assemble:
 *   as --64 -o probe.o kvm-probe.S && ld -m elf_x86_64 -Ttext 0x7c00 --oformat binary -e _start -o probe.bin probe.o
 */
        .code16
        .globl _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        movb    $'R', %al
        call    putc16
        lgdtl   gdt_desc
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $pmode
putc16:
        movw    $0x3f8, %dx
        outb    %al, %dx
        ret

        .code32
pmode:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $0x7c00, %esp
        movb    $'P', %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        /* identity-map the first 2 MiB: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000 (one 2 MiB page) */
        movl    $0x1000, %edi
        xorl    %eax, %eax
        movl    $3072, %ecx
        rep stosl
        movl    $0x2003, 0x1000
        movl    $0x3003, 0x2000
        movl    $0x0083, 0x3000
        movl    %cr4, %eax
        orl     $0x20, %eax             /* PAE */
        movl    %eax, %cr4
        movl    $0x1000, %eax
        movl    %eax, %cr3
        movl    $0xC0000080, %ecx       /* EFER */
        rdmsr
        orl     $0x100, %eax            /* LME */
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000000, %eax       /* PG */
        movl    %eax, %cr0
        ljmpl   $0x18, $lmode

        .code64
lmode:
        movb    $'L', %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        /* some real work in long mode: 2^24 rounds of a 64-bit LCG, checked against the known result */
        movq    $1, %rax
        movabsq $6364136223846793005, %rbx
        movabsq $1442695040888963407, %r8
        movl    $0x1000000, %ecx
1:      imulq   %rbx, %rax
        addq    %r8, %rax
        decl    %ecx
        jnz     1b
        movabsq $0x87f2ceae69000001, %rbx
        leaq    okmsg(%rip), %rsi
        cmpq    %rbx, %rax
        je      2f
        leaq    badmsg(%rip), %rsi
2:      movw    $0x3f8, %dx
3:      lodsb
        testb   %al, %al
        jz      4f
        outb    %al, %dx
        jmp     3b
4:      cli
        hlt
        jmp     4b

okmsg:  .asciz  " VFPROBE-OK\n"
badmsg: .asciz  " VFPROBE-BAD\n"
        .balign 8
gdt:    .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08 32-bit code */
        .quad   0x00cf92000000ffff      /* 0x10 data */
        .quad   0x00af9a000000ffff      /* 0x18 64-bit code */
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt
        .org    510
        .byte   0x55, 0xaa
