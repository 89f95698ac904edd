// Resident growth by call stack: a sample of user page faults (raw tracepoint exceptions:page_fault_user) that make a new page (write fault on a
// not-present page), counted per (process, user stack) in the kernel. Cheap enough to leave on: the
// unsampled path is one tracepoint hit, one bit test and one random number.
//   -DSAMPLE_EVERY=N   keep about one fault in N (default 64)
//   -DMAX_ENTRIES=N    (tgid, stack) counters (default 16384); a full map is counted in fault_stats[1]
//   -DSTACK_ENTRIES=N  distinct stacks (default 8192); a lost stack is counted in fault_stats[2]
//   -DSKIP_TGID=N      never sample this process (the agent itself)
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
BPF_ARRAY(fault_stats, u64, 3);  // [0] sampled faults, [1] counter map full, [2] stack lost

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
