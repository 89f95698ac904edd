/* Outstanding native allocations per call site (issue 3).
 *
 * How the programs are attached depends on the kernel (the attach ladder, nativewatch/malloc_profile/
 * attach.py); every way is scoped to one process and bound to file descriptors:
 * - session (>= 6.13): on_alloc is one uprobe_multi *session* program on every malloc-family entry
 *   point and on mmap; the kernel runs its return half only when the entry half returned 0 (sampled).
 * - multi (>= 6.6): on_alloc on uprobe_multi entry links, on_alloc_ret on uretprobe_multi links at the
 *   same points: every allocating call pays a return trap.
 * - perf (>= 4.17): one perf-event uprobe per point; no attach cookies there, so each entry point gets
 *   the on_alloc_kN / on_free_fN program with its kind built in, plus on_alloc_ret for returns.
 * The entry-only on_free (cookie) or on_free_fN sits on free and munmap.
 *
 * Cost model: every call pays one uprobe trap and a per-CPU counter update. Only allocations picked
 * by byte sampling (a Poisson process over allocated bytes, mean INTERVAL) read the stack, return
 * 0 from the entry half so the kernel arms the return half, and enter the address map. Frees pay one
 * hash lookup. Sites are aggregated here with sampling already scaled back, so user space only reads
 * summaries.
 *
 * A sampled call's entry and return are matched on (thread, stack pointer at entry): at the return the
 * stack pointer is one word above it, so nested allocator calls (operator new -> malloc) and return
 * programs that run on every call cannot take each other's record.
 *
 * hits[] counts probe hits per CPU without atomics: user space turns their rate into the target's
 * added CPU with the measured per-hit cost and stops the capture over budget (governor.py).
 *
 * The target's thread group id is config[0] (set by user space, so the same loaded program can be
 * calibrated on a helper process first); 0 means no process.
 *
 * Stack copies (STACK_COPY > 0, issue 11): code built without frame pointers (Debian's and RHEL's
 * packages) makes the kernel's frame-pointer walk stop one frame above malloc. A sampled call then
 * also copies up to STACK_COPY bytes of the user stack from the stack pointer, with the registers an
 * unwinder starts from, into a ring buffer; user space unwinds that copy with the objects' CFI. Only
 * sampled calls pay for it. Such an allocation is recorded under {STACK_COPIED, kind, sample id}
 * instead of a kernel site, and user space groups them by the unwound stack; when the ring buffer is
 * full the call keeps its frame-pointer site (C_COPY_LOST), so nothing is lost from the totals.
 * A call whose stack matches a walk user space already did (the walks map) is not copied at all:
 * it goes to that walk's site, {STACK_WALKED, kind, group}, in the sites map.
 *
 * Compile-time knobs (-D): COMPAT_READ, INTERVAL (bytes, mean sampling interval), EXACT (1 = record
 * every allocation), MAX_ALLOCS, MAX_SITES, MAX_STACKS, STACK_COPY and RING_PAGES (the ring buffer's
 * size in pages, a power of two), and NEST_LO/NEST_HI: the text of the object
 * whose operator new is probed. malloc calls made from there are the inside of a `new` that was
 * already seen (libstdc++'s new calls malloc), so they are skipped instead of counted twice. */
#include <uapi/linux/ptrace.h>
#include "malloc_sites.h"

#ifndef INTERVAL
#define INTERVAL 524288
#endif
/* The perf rung serves kernels from 4.17, older than bpf_probe_read_user (5.5): there the generic
 * bpf_probe_read, which on x86 reads user addresses too (and still does on new kernels). */
#if COMPAT_READ
#define read_user bpf_probe_read
#else
#define read_user bpf_probe_read_user
#endif
#ifndef EXACT
#define EXACT 0
#endif
#ifndef MAX_ALLOCS
#define MAX_ALLOCS 65536
#endif
#ifndef MAX_SITES
#define MAX_SITES 16384
#endif
#ifndef MAX_STACKS
#define MAX_STACKS 16384
#endif
#ifndef STACK_COPY
#define STACK_COPY 0
#endif
#ifndef RING_PAGES
#define RING_PAGES 1024
#endif
#ifndef MAX_WALKS
#define MAX_WALKS 8192
#endif

struct site_key {
    s32 stackid;   /* user stack from the frame-pointer chain, or negative if lost */
    u32 kind;      /* allocating entry point (K_*) */
    u64 caller;    /* *(u64 *)sp at entry: the immediate caller, correct without frame pointers */
};

struct site_val {
    s64 out_bytes;     /* outstanding, scaled back */
    s64 out_count_fx;  /* outstanding count << FX_SHIFT, scaled back */
    u64 alloc_bytes;   /* allocated during the profile, scaled back */
    u64 alloc_count_fx;
};

struct alloc_val {
    struct site_key site;
    u64 size;
    u64 wbytes;     /* what this allocation added to its site (subtracted again on free) */
    u64 wcount_fx;
    u64 ts_ns;
};

struct pending_val {
    struct site_key site;
    u64 size;
    u64 memptr;     /* posix_memalign's out-pointer */
    u64 ts_ns;
};

struct pending_key {
    u32 tid;
    u32 pad;
    u64 sp;         /* stack pointer at entry (points at the return address) */
};

struct skip_range {
    u64 lo;
    u64 hi;
};

BPF_HASH(allocs, u64, struct alloc_val, MAX_ALLOCS);
BPF_HASH(sites, struct site_key, struct site_val, MAX_SITES);
/* LRU: a sampled call that never returns (longjmp, thread exit) ages out instead of filling it */
BPF_TABLE("lru_hash", struct pending_key, struct pending_val, pending, 4096);
BPF_STACK_TRACE(stacks, MAX_STACKS);
BPF_ARRAY(counters, u64, N_COUNTERS);
BPF_PERCPU_ARRAY(hits, u64, N_HITS);
BPF_ARRAY(config, u64, 2);  /* [0] target tgid, [1] the top of its main thread's stack (0: unknown) */
BPF_PERCPU_ARRAY(remaining, s64, 1);
BPF_ARRAY(exp_table, u64, EXP_SLOTS);
BPF_ARRAY(weight_table, u64, WEIGHT_SLOTS);
BPF_ARRAY(skip_ranges, struct skip_range, MAX_SKIP_RANGES);
#if STACK_COPY
#include "stack_copy.h"
struct stack_event {
    u32 type;       /* EV_SAMPLE */
    u32 kind;
    u64 id;         /* sample id: the `caller` of the allocation's site key */
    u64 size;
    u64 wbytes;     /* scaled-back bytes, as the kernel would have added them to a site */
    u64 ts_ns;
    u64 ip, sp, bp; /* at the allocator's entry: sp points at the return address */
    u32 tid;
    u32 copied;     /* bytes of stack[] that hold the stack from sp upwards */
    u8 stack[STACK_COPY];
};
struct cancel_event {
    u32 type;       /* EV_CANCEL */
    u32 pad;
    u64 id;
};
BPF_RINGBUF_OUTPUT(stack_events, RING_PAGES);
BPF_ARRAY(sample_ids, u64, 1);

/* Walks user space has unwound (stack_copy.h), by (ip, sp) at the allocator's entry; user space empties
 * it when the target's code mappings change. */
struct walk_key {
    u64 ip;
    u64 sp;
    u32 slot;    /* 0..WALK_SLOTS-1, filled in order */
    u32 pad;
};
BPF_HASH(walks, struct walk_key, struct walk_val, MAX_WALKS);
#endif
#if EXACT
/* operator delete often ends in a tail call to free: the second release of the same pointer on the
 * same thread is that, not an unmatched free */
BPF_HASH(last_release, u32, u64, 4096);
#endif

static __always_inline int nested(u64 caller)
{
#ifdef NEST_LO
    return caller >= NEST_LO && caller < NEST_HI;
#else
    return 0;
#endif
}

static __always_inline void count(u32 slot)
{
    u64 *c = counters.lookup(&slot);
    if (c)
        __sync_fetch_and_add(c, 1);
}

/* Scaled-back bytes for one sampled allocation of `size`: size / P(sampled) with
 * P = 1 - exp(-size / INTERVAL). Linear interpolation in a table user space filled in. */
static __always_inline u64 scaled_bytes(u64 size)
{
#if EXACT
    return size;
#else
    if (size >= 16ULL * INTERVAL)
        return size;
    u64 step = INTERVAL / WEIGHT_STEPS;
    if (step == 0)
        step = 1;
    u32 i = size / step;
    u32 j = i + 1;
    u64 *a = weight_table.lookup(&i);
    u64 *b = weight_table.lookup(&j);
    if (!a || !b)
        return size;
    u64 frac = size - (u64)i * step;
    if (*b >= *a)
        return *a + (*b - *a) * frac / step;
    return *a - (*a - *b) * frac / step;
#endif
}

/* Byte sampling: a per-CPU countdown to the next sample point, redrawn from an exponential
 * distribution after each sample. Returns 1 when this allocation is sampled. */
static __always_inline int sample(u64 size)
{
#if EXACT
    return 1;
#else
    u32 zero = 0;
    s64 *rem = remaining.lookup(&zero);
    if (!rem)
        return 0;
    if (*rem > (s64)size) {
        *rem -= size;
        return 0;
    }
    u32 slot = bpf_get_prandom_u32() & (EXP_SLOTS - 1);
    u64 *next = exp_table.lookup(&slot);
    *rem = next ? (s64)*next : (s64)INTERVAL;
    return 1;
#endif
}

static __always_inline int in_skip_range(u64 addr)
{
#pragma unroll
    for (u32 i = 0; i < MAX_SKIP_RANGES; i++) {
        u32 k = i;
        struct skip_range *r = skip_ranges.lookup(&k);
        if (!r || r->hi == 0)
            return 0;
        if (addr >= r->lo && addr < r->hi)
            return 1;
    }
    return 0;
}

static __always_inline void release(u64 addr, int unmatched_counts)
{
    struct alloc_val *a = allocs.lookup(&addr);
    if (!a) {
#if EXACT
        if (unmatched_counts) {
            u32 tid = (u32)bpf_get_current_pid_tgid();
            u64 *last = last_release.lookup(&tid);
            if (!last || *last != addr)
                count(C_UNMATCHED_FREE);
        }
#endif
        return;
    }
    struct site_val *s = sites.lookup(&a->site);
    if (s) {
        __sync_fetch_and_add(&s->out_bytes, -(s64)a->wbytes);
        __sync_fetch_and_add(&s->out_count_fx, -(s64)a->wcount_fx);
    }
    allocs.delete(&addr);
#if EXACT
    u32 tid = (u32)bpf_get_current_pid_tgid();
    last_release.update(&tid, &addr);
#endif
}

static __always_inline void hit(u32 slot)
{
    u64 *h = hits.lookup(&slot);
    if (h)
        *h += 1;
}

/* The target's thread group id, or 0 for any other process. */
static __always_inline u32 target_tid(void)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 zero = 0;
    u64 *tgid = config.lookup(&zero);
    if (!tgid || *tgid == 0 || (id >> 32) != *tgid)
        return 0;
    return (u32)id;
}

/* A copied sample whose call failed: user space takes back what the event added. */
static __always_inline void cancel(struct site_key *site)
{
#if STACK_COPY
    if (site->stackid != STACK_COPIED)
        return;
    struct cancel_event *c = stack_events.ringbuf_reserve(sizeof(struct cancel_event));
    if (!c)
        return;  /* the allocation was never recorded: only its allocated total is one sample high */
    c->type = EV_CANCEL;
    c->pad = 0;
    c->id = site->caller;
    stack_events.ringbuf_submit(c, BPF_RB_NO_WAKEUP);
#endif
}

#if STACK_COPY
/* The stack matches a walk user space already unwound: the site is that walk's group. */
static __always_inline int known_walk(struct pt_regs *ctx, struct site_key *site)
{
    struct walk_key k = {};
    k.ip = PT_REGS_IP(ctx);
    k.sp = PT_REGS_SP(ctx);
    for (u32 slot = 0; slot < WALK_SLOTS; slot++) {
        k.slot = slot;
        struct walk_val *w = walks.lookup(&k);
        if (!w)
            return 0;
        if (walk_matches(w, k.sp, PT_REGS_FP(ctx))) {
            site->stackid = STACK_WALKED;
            site->caller = w->group;
            count(C_WALK_KNOWN);
            return 1;
        }
    }
    return 0;
}

/* Copy the user stack into a ring buffer record for user space to unwind. Returns 0 when the site
 * should keep its frame-pointer stack instead. */
static __always_inline int copy_stack(struct pt_regs *ctx, u32 tid, u32 kind, u64 size, struct site_key *site)
{
    struct stack_event *e = stack_events.ringbuf_reserve(sizeof(struct stack_event));
    if (!e) {
        count(C_COPY_LOST);
        return 0;
    }
    u64 sp = PT_REGS_SP(ctx);
    u32 one = 1;
    u64 *top = config.lookup(&one);
    u32 copied = copy_user_stack(e->stack, sp, top ? *top : 0);
    if (copied < 8) {
        stack_events.ringbuf_discard(e, 0);
        return 0;
    }
    u32 zero = 0;
    u64 *next = sample_ids.lookup(&zero);
    if (!next) {
        stack_events.ringbuf_discard(e, 0);
        return 0;
    }
    u64 id = __sync_fetch_and_add(next, 1) + 1;
    e->type = EV_SAMPLE;
    e->kind = kind;
    e->id = id;
    e->size = size;
    e->wbytes = scaled_bytes(size);
    e->ts_ns = bpf_ktime_get_ns();
    e->ip = PT_REGS_IP(ctx);
    e->sp = sp;
    e->bp = PT_REGS_FP(ctx);
    e->tid = tid;
    e->copied = copied;
    /* Waking the reader for every record costs the target more than the copy: user space drains on a
     * timer anyway, and is woken every 64th record so a burst cannot fill the ring between two. */
    stack_events.ringbuf_submit(e, (id & 63) ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP);
    site->stackid = STACK_COPIED;
    site->caller = id;
    return 1;
}
#endif

/* The stack of a sampled call: a walk user space already did, else a copy for it to unwind, else the
 * kernel's frame-pointer walk. */
static __always_inline void site_stack(struct pt_regs *ctx, u32 tid, u32 kind, u64 size, struct site_key *site)
{
#if STACK_COPY
    if (known_walk(ctx, site) || copy_stack(ctx, tid, kind, size, site))
        return;
#endif
    site->stackid = stacks.get_stackid(ctx, BPF_F_USER_STACK);
    if (site->stackid < 0)
        count(C_STACK_LOST);
}

/* A sampled allocation of `size` at `ptr` made from `site`: account it to the site (unless its stack
 * was copied: user space aggregates those) and remember it for its free. */
static __always_inline int record(u64 ptr, struct site_key *site, u64 size, u64 ts_ns)
{
    u64 wbytes = scaled_bytes(size);
    u64 wcount = size ? (wbytes << FX_SHIFT) / size : (1ULL << FX_SHIFT);

    struct site_val *s = 0;
    if (site->stackid != STACK_COPIED) {
        struct site_val zero = {};
        s = sites.lookup_or_try_init(site, &zero);
        if (!s) {
            count(C_SITES_FULL);
            return 0;
        }
        __sync_fetch_and_add(&s->alloc_bytes, wbytes);
        __sync_fetch_and_add(&s->alloc_count_fx, wcount);
    }

    /* An address still present means its free was missed: retire the old record first. */
    release(ptr, 0);
    struct alloc_val a = {};
    a.site = *site;
    a.size = size;
    a.wbytes = wbytes;
    a.wcount_fx = wcount;
    a.ts_ns = ts_ns;
    if (allocs.update(&ptr, &a) != 0) {
        count(C_MAP_FULL);
        return 0;
    }
    if (s) {
        __sync_fetch_and_add(&s->out_bytes, (s64)wbytes);
        __sync_fetch_and_add(&s->out_count_fx, (s64)wcount);
    }
    return 0;
}

/* Return half. `every_call`: this program runs after every allocating call (not only sampled ones),
 * so a missing record is the normal case, not a lost event. */
static __always_inline int alloc_return(struct pt_regs *ctx, u32 tid, int every_call)
{
    struct pending_key pk = {};
    pk.tid = tid;
    pk.sp = PT_REGS_SP(ctx) - 8;
    struct pending_val *p = pending.lookup(&pk);
    if (!p) {
        if (!every_call)
            count(C_EVENTS_LOST);
        return 0;
    }
    struct pending_val pv = *p;
    pending.delete(&pk);

    u64 ptr = PT_REGS_RC(ctx);
    if (pv.site.kind == K_POSIX_MEMALIGN) {
        if (ptr != 0)
            ptr = 0;  /* an error number: failed */
        else
            read_user(&ptr, sizeof(ptr), (void *)pv.memptr);
    }
    if (ptr == 0 || ptr >= (u64)-4095) {
        cancel(&pv.site);
        return 0;
    }

    return record(ptr, &pv.site, pv.size, pv.ts_ns);
}

/* Entry half: returns 0 when the call is sampled (its record waits for the return), 1 otherwise. */
static __always_inline int alloc_entry(struct pt_regs *ctx, u32 tid, u32 kind)
{
    hit(H_ALLOC);
    u64 size = 0, memptr = 0, old = 0;
    switch (kind) {
    case K_MALLOC:
    case K_NEW:
    case K_VALLOC:
        size = PT_REGS_PARM1(ctx);
        break;
    case K_PVALLOC:
        size = (PT_REGS_PARM1(ctx) + 4095) & ~4095ULL;
        break;
    case K_CALLOC:
        size = PT_REGS_PARM1(ctx) * PT_REGS_PARM2(ctx);
        break;
    case K_REALLOC:
        old = PT_REGS_PARM1(ctx);
        size = PT_REGS_PARM2(ctx);
        break;
    case K_REALLOCARRAY:
        old = PT_REGS_PARM1(ctx);
        size = PT_REGS_PARM2(ctx) * PT_REGS_PARM3(ctx);
        break;
    case K_POSIX_MEMALIGN:
        memptr = PT_REGS_PARM1(ctx);
        size = PT_REGS_PARM3(ctx);
        break;
    case K_MEMALIGN:
        size = PT_REGS_PARM2(ctx);
        break;
    case K_MMAP:
        size = PT_REGS_PARM2(ctx);
        /* only anonymous mappings are native memory; file mappings are the `file` category */
        if (!(PT_REGS_PARM4(ctx) & 0x20))
            return 1;
        break;
    default:
        return 1;
    }
    /* the caller is read up front only when a filter needs it; otherwise just for sampled calls */
    u64 caller = 0;
#ifdef NEST_LO
    const int early_caller = 1;
#else
    const int early_caller = 0;
#endif
    if (early_caller || kind == K_MMAP) {
        read_user(&caller, sizeof(caller), (void *)PT_REGS_SP(ctx));
        if (kind != K_NEW && kind != K_MMAP && nested(caller))
            return 1;
        if (kind == K_MMAP && in_skip_range(caller)) {
            /* the allocator's own mmaps are already counted through malloc */
            count(C_SKIPPED_MMAP);
            return 1;
        }
    }
    if (old)
        release(old, 1);
    if (!sample(size))
        return 1;
    if (!early_caller && kind != K_MMAP)
        read_user(&caller, sizeof(caller), (void *)PT_REGS_SP(ctx));
    count(C_SAMPLED);

    struct pending_val pv = {};
    pv.site.kind = kind;
    pv.site.caller = caller;
    site_stack(ctx, tid, kind, size, &pv.site);
    pv.size = size;
    pv.memptr = memptr;
    pv.ts_ns = bpf_ktime_get_ns();
    struct pending_key pk = {};
    pk.tid = tid;
    pk.sp = PT_REGS_SP(ctx);
    pending.update(&pk, &pv);
    return 0;
}

int on_alloc(struct pt_regs *ctx)
{
    u32 tid = target_tid();
    if (!tid)
        return 1;
    /* Session probe: the same program runs at entry and (when entry returned 0) at return, where
     * the instruction pointer is the caller's return address instead of the probed address. On
     * entry-only links the return half never comes here. */
    if (PT_REGS_IP(ctx) != bpf_get_func_ip(ctx)) {
        hit(H_RETURN);
        return alloc_return(ctx, tid, 0);
    }
    return alloc_entry(ctx, tid, (u32)bpf_get_attach_cookie(ctx));
}

/* uretprobe (multi or perf links): after every allocating call. */
int on_alloc_ret(struct pt_regs *ctx)
{
    u32 tid = target_tid();
    if (!tid)
        return 0;
    hit(H_RETURN);
    return alloc_return(ctx, tid, 1);
}

/* perf-event uprobes carry no cookie: one program per entry point kind. */
#define ALLOC_KIND_PROGRAM(k)                          \
    int on_alloc_k##k(struct pt_regs *ctx)             \
    {                                                  \
        u32 tid = target_tid();                        \
        return tid ? alloc_entry(ctx, tid, k) : 1;     \
    }
ALLOC_KIND_PROGRAM(1)
ALLOC_KIND_PROGRAM(2)
ALLOC_KIND_PROGRAM(3)
ALLOC_KIND_PROGRAM(5)
ALLOC_KIND_PROGRAM(6)
ALLOC_KIND_PROGRAM(7)
ALLOC_KIND_PROGRAM(8)
ALLOC_KIND_PROGRAM(9)
ALLOC_KIND_PROGRAM(10)


static __always_inline int free_entry(struct pt_regs *ctx, u32 kind)
{
    hit(H_FREE);
    u64 addr = PT_REGS_PARM1(ctx);
    if (addr == 0)
        return 0;
    int unmatched_counts = kind == F_FREE;
#if EXACT
    if (unmatched_counts) {
        u64 caller = 0;
        read_user(&caller, sizeof(caller), (void *)PT_REGS_SP(ctx));
        if (nested(caller))
            return 0;  /* freeing what a skipped nested malloc returned */
        /* the allocator's and libc's own frees (e.g. a thread's tcache flushed at exit) release
         * blocks the program already freed: not unmatched */
        if (in_skip_range(caller))
            unmatched_counts = 0;
    }
#endif
    /* munmap of an address never tracked is normal (file mappings, the allocator's own) */
    release(addr, unmatched_counts);
    return 0;
}

int on_free(struct pt_regs *ctx)
{
    return target_tid() ? free_entry(ctx, (u32)bpf_get_attach_cookie(ctx)) : 0;
}

#define FREE_KIND_PROGRAM(k)                                \
    int on_free_f##k(struct pt_regs *ctx)                   \
    {                                                       \
        return target_tid() ? free_entry(ctx, k) : 0;       \
    }
FREE_KIND_PROGRAM(1)
FREE_KIND_PROGRAM(2)
FREE_KIND_PROGRAM(3)


/* The in-process sampler (nativewatch/inject/nwsampler.c) calls nw_report_alloc(ptr, size, kind,
 * caller) only for the allocations it sampled, with the same Poisson scheme, and nw_report_free(ptr)
 * only for addresses it sampled: one entry probe on each, no return half, no trap for the other calls. */
int on_report_alloc(struct pt_regs *ctx)
{
    u32 tid = target_tid();
    if (!tid)
        return 0;
    hit(H_ALLOC);
    u64 ptr = PT_REGS_PARM1(ctx);
    u64 size = PT_REGS_PARM2(ctx);
    u32 kind = (u32)PT_REGS_PARM3(ctx);
    if (ptr == 0)
        return 0;
    count(C_SAMPLED);
    struct site_key site = {};
    site.kind = kind;
    site.caller = PT_REGS_PARM4(ctx);
    site_stack(ctx, tid, kind, size, &site);
    return record(ptr, &site, size, bpf_ktime_get_ns());
}

int on_report_free(struct pt_regs *ctx)
{
    if (!target_tid())
        return 0;
    hit(H_FREE);
    u64 addr = PT_REGS_PARM1(ctx);
    if (addr)
        release(addr, 0);
    return 0;
}
