// Resident growth by call stack: a sample of user page faults (raw tracepoint exceptions:page_fault_user) that make a new page (write fault on a
// not-present page), counted per (process, user stack) in the kernel. Cheap enough to leave on: the
// unsampled path is one tracepoint hit, one bit test and one random number.
//   -DSAMPLE_EVERY=N   keep about one fault in N (default 64)
//   -DMAX_ENTRIES=N    (tgid, stack) counters (default 16384); a full map is counted in fault_stats[1]
//   -DSTACK_ENTRIES=N  distinct stacks (default 8192); a lost stack is counted in fault_stats[2]
//   -DSKIP_TGID=N      never sample this process (the agent itself)
//   -DSTACK_COPY=N     also copy N bytes of the user stack per sample for unwinding with CFI in user
//                      space (issue 11; 0: frame pointers only), through the ring buffer fault_copies
//                      (-DRING_PAGES pages); a sample whose stack matches a walk user space already
//                      did (fault_walks) is counted in walk_counts instead, with no copy. When the
//                      ring is full the sample keeps its frame-pointer stack (fault_stats[3]).
#include <linux/ptrace.h>

#ifndef SAMPLE_EVERY
#define SAMPLE_EVERY 64
#endif
#ifndef MAX_ENTRIES
#define MAX_ENTRIES 16384
#endif
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 8192
#endif
#ifndef SKIP_TGID
#define SKIP_TGID 0
#endif
#ifndef STACK_COPY
#define STACK_COPY 0
#endif
#ifndef RING_PAGES
#define RING_PAGES 256
#endif
#ifndef MAX_WALKS
#define MAX_WALKS 8192
#endif

struct fault_key_t {
    u32 tgid;
    s32 stack_id;
};

BPF_HASH(fault_counts, struct fault_key_t, u64, MAX_ENTRIES);
BPF_STACK_TRACE(fault_stacks, STACK_ENTRIES);
// The word at the user stack pointer, per stack: the return address into the caller when the faulting
// function is a frameless leaf (libc's memset/memcpy), which the frame-pointer walk skips. User space
// decides whether to use it; keyed by stack id so it never multiplies the counters.
BPF_HASH(ret_hints, u32, u64, STACK_ENTRIES);
BPF_ARRAY(fault_stats, u64, 4);  // [0] sampled faults, [1] counter map full, [2] stack lost, [3] copy lost

#if STACK_COPY
#define read_user bpf_probe_read_user
#include "stack_copy.h"
struct fault_copy_t {
    u32 tgid;
    u32 copied;  // bytes of stack[] that hold the stack from sp upwards
    u64 ip, sp, bp;
    u8 stack[STACK_COPY];
};
BPF_RINGBUF_OUTPUT(fault_copies, RING_PAGES);
struct walk_key_t {
    u32 tgid;
    u32 slot;
    u64 ip;
    u64 sp;
};
// LRU: walks of processes that are gone, or of code paths no longer taken, age out by themselves
BPF_TABLE("lru_hash", struct walk_key_t, struct walk_val, fault_walks, MAX_WALKS);
struct walk_count_key_t {
    u32 tgid;
    u32 group;
};
BPF_HASH(walk_counts, struct walk_count_key_t, u64, MAX_ENTRIES);
#endif

static inline void bump_stat(int idx) {
    u64 *v = fault_stats.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
}

// A raw tracepoint: the program gets the tracepoint's arguments as they are (address, regs,
// error_code) without the kernel first building a perf trace record for every fault, which is what
// makes a classic tracepoint cost several hundred ns on this hot path.
RAW_TRACEPOINT_PROBE(page_fault_user) {
    // error_code bit 0: page was present (protection fault); bit 1: write. A write to a not-present
    // page is the first touch that makes anonymous memory resident (reads map the shared zero page).
    unsigned long error_code = ctx->args[2];
    if ((error_code & 3) != 2)
        return 0;
    if (bpf_get_prandom_u32() % SAMPLE_EVERY != 0)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == SKIP_TGID)
        return 0;
    bump_stat(0);
#if STACK_COPY
    {
        struct pt_regs *uregs = (struct pt_regs *)ctx->args[1];
        u64 ip = 0, sp = 0, bp = 0;
        bpf_probe_read_kernel(&ip, sizeof(ip), &uregs->ip);
        bpf_probe_read_kernel(&sp, sizeof(sp), &uregs->sp);
        bpf_probe_read_kernel(&bp, sizeof(bp), &uregs->bp);
        struct walk_key_t wk = {};
        wk.tgid = tgid;
        wk.ip = ip;
        wk.sp = sp;
        for (u32 slot = 0; slot < WALK_SLOTS; slot++) {
            wk.slot = slot;
            struct walk_val *w = fault_walks.lookup(&wk);
            if (!w)
                break;
            if (walk_matches(w, sp, bp)) {
                struct walk_count_key_t ck = {};
                ck.tgid = tgid;
                ck.group = w->group;
                u64 zero = 0;
                u64 *n = walk_counts.lookup_or_try_init(&ck, &zero);
                if (n)
                    __sync_fetch_and_add(n, 1);
                else
                    bump_stat(1);
                return 0;
            }
        }
        struct fault_copy_t *e = fault_copies.ringbuf_reserve(sizeof(struct fault_copy_t));
        if (e) {
            u32 copied = copy_user_stack(e->stack, sp, 0);
            if (copied >= 8) {
                e->tgid = tgid;
                e->copied = copied;
                e->ip = ip;
                e->sp = sp;
                e->bp = bp;
                // user space drains on its own schedule: never wake it
                fault_copies.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
                return 0;
            }
            fault_copies.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
        }
        bump_stat(3);
    }
#endif
    struct fault_key_t key = {};
    key.tgid = tgid;
    key.stack_id = fault_stacks.get_stackid(ctx, BPF_F_USER_STACK);
    if (key.stack_id < 0) {
        bump_stat(2);
    } else {
        struct pt_regs *regs = (struct pt_regs *)ctx->args[1];
        u64 sp = 0, ret = 0;
        bpf_probe_read_kernel(&sp, sizeof(sp), &regs->sp);
        if (sp && bpf_probe_read_user(&ret, sizeof(ret), (void *)sp) == 0) {
            u32 sid = key.stack_id;
            ret_hints.update(&sid, &ret);
        }
    }
    u64 zero = 0;
    u64 *count = fault_counts.lookup_or_try_init(&key, &zero);
    if (!count) {
        bump_stat(1);
        return 0;
    }
    __sync_fetch_and_add(count, 1);
    return 0;
}
