/* Copies of the user stack for unwinding in user space, and the walks user space hands back
 * (issue 11). Shared by malloc_sites.c and page_faults.c; the includer defines STACK_COPY (bytes,
 * > 0) and read_user (bpf_probe_read_user, or bpf_probe_read on old kernels).
 *
 * A walk is a pure function of ip, sp, bp (when it used it) and the few stack words it read: when
 * those words hold the same values again, the stack is that walk's and needs no copy. User space
 * fills a walks map after each walk it did; each (ip, sp) has WALK_SLOTS walks, since different call
 * paths can reach the same instruction with the same stack pointer (two callers with equal frames). */
#ifndef NATIVEWATCH_STACK_COPY_H
#define NATIVEWATCH_STACK_COPY_H

#define WALK_READS 32  /* stack words a remembered walk may depend on */
#define WALK_SLOTS 4   /* remembered walks per (ip, sp) */

struct walk_val {
    u32 group;   /* user space's stack group */
    u32 n;       /* words to check */
    u32 use_bp;
    u32 pad;
    u64 bp;
    u32 off[WALK_READS];  /* from sp */
    u64 val[WALK_READS];
};

/* Copy the user stack from sp into dst: all STACK_COPY bytes when readable, else as many whole pages
 * as are (the main thread's stack ends at the top of its mapping). `top`, when known, is where the
 * main thread's frames end (the stack's start at exec: above it only argv and the environment): a
 * copy that would pass it is cut there, since a read that faults costs several times a whole copy.
 * Returns the bytes copied. */
static __always_inline u32 copy_user_stack(u8 *dst, u64 sp, u64 top)
{
    if (top > sp && top - sp <= STACK_COPY - 16) {
        u32 want = (u32)(((top - sp) + 15) & ~7ULL);
        asm volatile("" : "+r"(want));  /* keep the bound below where the verifier sees it */
        if (want > STACK_COPY - 8)
            want = STACK_COPY - 8;
        if (want >= 8 && read_user(dst, want, (void *)sp) == 0)
            return want;
    }
    if (read_user(dst, STACK_COPY, (void *)sp) == 0)
        return STACK_COPY;
    u64 first = 4096 - (sp & 4095);
#pragma unroll
    for (int i = STACK_COPY / 4096; i >= 0; i--) {
        u64 len = first + (u64)i * 4096;
        if (len > STACK_COPY)
            continue;
        if (read_user(dst, len, (void *)sp) == 0)
            return (u32)len;
    }
    return 0;
}

/* The walk's words hold the same values in the stack at sp. */
static __always_inline int walk_matches(struct walk_val *w, u64 sp, u64 bp)
{
    if (w->use_bp && w->bp != bp)
        return 0;
    u32 n = w->n;
    /* a bounded loop (kernel >= 5.3; stack copies need 5.8 for the ring buffer anyway) */
    for (u32 i = 0; i < WALK_READS; i++) {
        if (i >= n)
            break;
        u32 j = i;
        asm volatile("" : "+r"(j));  /* keeps clang from turning the index into a pointer walk the verifier cannot bound */
        j &= WALK_READS - 1;
        u64 v = 0;
        u32 off = w->off[j];
        if (off > STACK_COPY - 8)
            return 0;
        if (read_user(&v, sizeof(v), (void *)(sp + off)) != 0 || v != w->val[j])
            return 0;
    }
    return 1;
}

#endif
