/* nwsampler: allocation sampling inside the target process (issue 13).
 *
 * nativewatch puts this object into a running process (nativewatch/inject/): the process's own
 * dynamic loader maps it, then the GOT entries through which the process calls the allocator are
 * pointed at the hooks below. A hook calls the real function (its address is written into nwr_* by
 * nativewatch before any GOT entry points here) and decides in a few instructions whether the call
 * is sampled. Only a sampled call reaches nw_report_alloc / nw_report_free, which nativewatch's BPF
 * program probes (bpf/malloc_sites.c): so only sampled calls trap into the kernel, and their stacks
 * come from the same capture (frame pointers or a stack copy) as the uprobe path.
 *
 * Sampling is the uprobe path's: a Poisson process over allocated bytes, its next distances drawn
 * from the same table of exponential quantiles (nw_state->exp), so the kernel's scale-back applies
 * unchanged. The countdown is per thread, approximately: slots are picked by the stack pointer (no
 * TLS: a dlopen'ed object's TLS may allocate on first use) and updated with atomics, so two threads
 * that share a slot still see a Poisson process over their merged bytes.
 *
 * A free must find out cheaply whether its pointer was sampled: sampled addresses are kept in a
 * lock-free set of 8-slot buckets (one cache line each, no probing, so no tombstones build up);
 * a full bucket makes the allocation unsampled (counted in nw_state->set_full).
 *
 * Safety: no allocation, no lock, no libc (the object has no imports at all; the two system calls it
 * makes are inline). All mutable state is in one mapping made with MADV_WIPEONFORK: a forked child
 * sees it zeroed, so its hooks pass straight through. Everything is off (hooks pass through) until
 * nativewatch sets nw_state->enabled, and when it clears it; the GOT entries are restored at the end
 * of a capture and the object stays mapped, inert, for the next one. A nativewatch that dies without
 * restoring leaves hooks that pass through once nw_state->unacked passes its limit (nativewatch
 * resets it every poll). */
#include <stddef.h>
#include <stdint.h>

/* Nothing is exported: nativewatch finds every symbol in the file's own .symtab, and hidden symbols
 * are reached without the GOT (the hooks' fast path is a few instructions). */
#define EXPORT __attribute__((visibility("hidden")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* kinds, as bpf/malloc_sites.h */
#define K_MALLOC 1
#define K_CALLOC 2
#define K_REALLOC 3
#define K_REALLOCARRAY 4
#define K_POSIX_MEMALIGN 5
#define K_MEMALIGN 6
#define K_VALLOC 7
#define K_PVALLOC 8
#define K_MMAP 9
#define K_NEW 10
#define F_FREE 1
#define F_MUNMAP 2
#define F_DELETE 3

#define NW_MAGIC 0x6e77736d706c7231ULL /* "nwsmplr1" */
#define NW_SLOTS 1024                  /* countdown slots, one cache line each */
#define NW_EXP 1024                    /* exponential quantiles (sampling.EXP_SLOTS) */
#define NW_BUCKETS 32768               /* sampled-address set: 8 addresses a bucket, 2 MiB */
#define NW_BUCKET 8
#define NW_UNACKED_LIMIT 1000000       /* sampled calls without a poll from nativewatch: it is gone */

struct nw_slot {
    int64_t remaining; /* bytes to the next sample point */
    uint64_t calls;    /* hook calls (not atomic: an estimate of the rate, for the cost report) */
    uint64_t rng;
    uint64_t pad[5];
};

/* Layout shared with nativewatch/inject/sampler.py (offsets checked there against nw_layout[]). */
struct nw_state {
    uint64_t magic;
    uint64_t enabled;      /* 0: every hook passes through */
    uint64_t interval;     /* mean sampling interval in bytes; 0: every call is sampled */
    uint64_t unacked;      /* sampled calls since nativewatch last reset this */
    uint64_t sampled;
    uint64_t set_full;     /* sampled allocations dropped: their bucket was full */
    uint64_t generation;   /* bumped by nativewatch at every enable */
    uint64_t pad[1];
    uint64_t exp[NW_EXP];
    struct nw_slot slots[NW_SLOTS];
    uint64_t set[NW_BUCKETS * NW_BUCKET];
};

EXPORT struct nw_state *nw_state;
EXPORT const uint64_t nw_layout[] = {
    sizeof(struct nw_state), offsetof(struct nw_state, enabled), offsetof(struct nw_state, interval),
    offsetof(struct nw_state, unacked), offsetof(struct nw_state, sampled), offsetof(struct nw_state, set_full),
    offsetof(struct nw_state, generation), offsetof(struct nw_state, exp), offsetof(struct nw_state, slots),
    sizeof(struct nw_slot), offsetof(struct nw_state, set), NW_BUCKETS * NW_BUCKET, NW_SLOTS, NW_EXP,
};

/* The patch log: every GOT entry nativewatch pointed here, with its original value, so a later
 * nativewatch can restore what a killed one left (nativewatch/inject/sampler.py). Not wiped on fork:
 * a child's GOT is patched too, but nobody restores it (its hooks pass through). */
#define NW_PATCHES 8192
EXPORT uint64_t nw_patches[NW_PATCHES][2];
EXPORT uint64_t nw_npatches;
EXPORT uint64_t nw_owner; /* pid of the nativewatch holding the patches (0: none) */

static long raw_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

#define SYS_mmap 9
#define SYS_madvise 28
#define MADV_DONTNEED 4
#define MADV_WIPEONFORK 18

/* Also called by nativewatch in a forked child of a process that had the sampler: the child's copy of
 * the state mapping reads as zeros (WIPEONFORK), so it gets a mapping of its own. */
EXPORT void nw_reinit(void)
{
    long p = raw_syscall6(SYS_mmap, 0, sizeof(struct nw_state), 3 /* RW */, 0x22 /* PRIVATE|ANON */, -1, 0);
    if (p < 0 && p > -4096)
        return; /* nw_state stays NULL: nativewatch refuses to patch */
    if (raw_syscall6(SYS_madvise, p, sizeof(struct nw_state), MADV_WIPEONFORK, 0, 0, 0) != 0)
        return; /* kernel < 4.14: a forked child would keep sampling; refuse */
    struct nw_state *s = (struct nw_state *)p;
    s->magic = NW_MAGIC;
    __atomic_store_n(&nw_state, s, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void nw_init(void)
{
    nw_reinit();
}

/* Called by nativewatch (a remote call, all threads stopped) after a capture: the set and slots go
 * back to untouched pages. The header page is kept. */
EXPORT void nw_release(void)
{
    struct nw_state *s = nw_state;
    if (!s)
        return;
    uintptr_t lo = ((uintptr_t)s->exp + 4095) & ~(uintptr_t)4095;
    uintptr_t hi = ((uintptr_t)s + sizeof(*s)) & ~(uintptr_t)4095;
    if (hi > lo)
        raw_syscall6(SYS_madvise, (long)lo, (long)(hi - lo), MADV_DONTNEED, 0, 0, 0);
}

/* The probed functions: only their entry matters (bpf/malloc_sites.c reads the arguments). Written
 * in assembly so that the first instruction is a push, which the kernel's uprobe code emulates (a bare
 * `ret` would be single-stepped out of line, ~10x the cost of the trap). */
#define REPORT_FUNCTION(name)                \
    ".p2align 4\n"                           \
    ".type " #name ", @function\n"           \
    ".hidden " #name "\n"                    \
    #name ":\n"                              \
    ".cfi_startproc\n"                       \
    "push %rbp\n"                            \
    ".cfi_def_cfa_offset 16\n"               \
    ".cfi_offset %rbp, -16\n"                \
    "pop %rbp\n"                             \
    ".cfi_def_cfa_offset 8\n"                \
    "ret\n"                                  \
    ".cfi_endproc\n"                         \
    ".size " #name ", .-" #name "\n"
__asm__(".text\n" REPORT_FUNCTION(nw_report_alloc) REPORT_FUNCTION(nw_report_free));
void nw_report_alloc(void *ptr, uint64_t size, uint64_t kind, void *caller) EXPORT;
void nw_report_free(void *ptr, uint64_t kind) EXPORT;

static inline struct nw_state *on(void)
{
    struct nw_state *s = __atomic_load_n(&nw_state, __ATOMIC_RELAXED);
    return (s && __atomic_load_n(&s->enabled, __ATOMIC_RELAXED)) ? s : 0;
}

static inline struct nw_slot *my_slot(struct nw_state *s)
{
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
    uint64_t h = (uint64_t)(sp >> 16) * 0x9E3779B97F4A7C15ULL;
    return &s->slots[h >> (64 - 10)];
}

/* 1 when an allocation of `size` bytes is sampled. */
static inline int sampled(struct nw_state *s, uint64_t size)
{
    uint64_t interval = s->interval;
    struct nw_slot *slot = my_slot(s);
    slot->calls++;
    if (interval == 0)
        return 1;
    int64_t n = size ? (int64_t)size : 1;
    int64_t before = __atomic_fetch_sub(&slot->remaining, n, __ATOMIC_RELAXED);
    if (likely(before > n))
        return 0;
    uint64_t x = slot->rng ? slot->rng : (uint64_t)(uintptr_t)slot ^ 0x2545F4914F6CDD1DULL;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    slot->rng = x;
    uint64_t next = s->exp[(x >> 11) & (NW_EXP - 1)];
    __atomic_store_n(&slot->remaining, (int64_t)(next ? next : interval), __ATOMIC_RELAXED);
    return 1;
}

static inline uint64_t *bucket_of(struct nw_state *s, uint64_t ptr)
{
    uint64_t h = (ptr >> 4) * 0x9E3779B97F4A7C15ULL;
    return &s->set[(h >> (64 - 15)) * NW_BUCKET];
}

static inline int set_add(struct nw_state *s, uint64_t ptr)
{
    uint64_t *b = bucket_of(s, ptr);
    for (int i = 0; i < NW_BUCKET; i++) {
        uint64_t empty = 0;
        if (__atomic_load_n(&b[i], __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(&b[i], &empty, ptr, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return 1;
    }
    __atomic_fetch_add(&s->set_full, 1, __ATOMIC_RELAXED);
    return 0;
}

static inline int set_remove(struct nw_state *s, uint64_t ptr)
{
    uint64_t *b = bucket_of(s, ptr);
    for (int i = 0; i < NW_BUCKET; i++) {
        uint64_t want = ptr;
        if (__atomic_load_n(&b[i], __ATOMIC_RELAXED) == ptr &&
            __atomic_compare_exchange_n(&b[i], &want, 0, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return 1;
    }
    return 0;
}

static inline void note_alloc(struct nw_state *s, void *p, uint64_t size, uint64_t kind, void *caller)
{
    if (!p || !sampled(s, size))
        return;
    if (unlikely(__atomic_add_fetch(&s->unacked, 1, __ATOMIC_RELAXED) > NW_UNACKED_LIMIT)) {
        __atomic_store_n(&s->enabled, 0, __ATOMIC_RELAXED);
        return;
    }
    if (!set_add(s, (uint64_t)p))
        return;
    __atomic_fetch_add(&s->sampled, 1, __ATOMIC_RELAXED);
    nw_report_alloc(p, size, kind, caller);
}

static inline void note_free(struct nw_state *s, void *p, uint64_t kind)
{
    if (p && set_remove(s, (uint64_t)p))
        nw_report_free(p, kind);
}

/* ---- the hooks ---------------------------------------------------------------------------------- */
#define CALLER __builtin_return_address(0)

typedef void *(*fn1)(uint64_t);
typedef void *(*fn2)(uint64_t, uint64_t);
typedef void *(*fn3)(uint64_t, uint64_t, uint64_t);
typedef void *(*fn6)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

#define REAL(name, type) EXPORT type nwr_##name

REAL(malloc, fn1);
REAL(calloc, fn2);
REAL(realloc, fn2);
REAL(reallocarray, fn3);
REAL(posix_memalign, fn3);
REAL(aligned_alloc, fn2);
REAL(memalign, fn2);
REAL(valloc, fn1);
REAL(pvalloc, fn1);
REAL(free, fn1);
REAL(cfree, fn1);
REAL(mmap, fn6);
REAL(mmap64, fn6);
REAL(munmap, fn2);

EXPORT void *nwh_malloc(uint64_t n)
{
    void *p = nwr_malloc(n);
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_alloc(s, p, n, K_MALLOC, CALLER);
    return p;
}

EXPORT void *nwh_calloc(uint64_t n, uint64_t m)
{
    void *p = nwr_calloc(n, m);
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_alloc(s, p, n * m, K_CALLOC, CALLER);
    return p;
}

/* A realloc releases the old block first (as the uprobe path does at entry): done after the call,
 * the old address could be handed out and sampled by another thread before it is removed. */
EXPORT void *nwh_realloc(void *old, uint64_t n)
{
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_free(s, old, F_FREE);
    void *p = nwr_realloc((uint64_t)old, n);
    if (unlikely(s != 0))
        note_alloc(s, p, n, K_REALLOC, CALLER);
    return p;
}

EXPORT void *nwh_reallocarray(void *old, uint64_t n, uint64_t m)
{
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_free(s, old, F_FREE);
    void *p = nwr_reallocarray((uint64_t)old, n, m);
    if (unlikely(s != 0))
        note_alloc(s, p, n * m, K_REALLOCARRAY, CALLER);
    return p;
}

EXPORT int nwh_posix_memalign(void **out, uint64_t align, uint64_t n)
{
    int r = (int)(intptr_t)nwr_posix_memalign((uint64_t)out, align, n);
    struct nw_state *s = on();
    if (unlikely(s != 0) && r == 0)
        note_alloc(s, *out, n, K_POSIX_MEMALIGN, CALLER);
    return r;
}

#define ALIGNED_HOOK(name)                                        \
    EXPORT void *nwh_##name(uint64_t align, uint64_t n)           \
    {                                                             \
        void *p = nwr_##name(align, n);                           \
        struct nw_state *s = on();                                \
        if (unlikely(s != 0))                                     \
            note_alloc(s, p, n, K_MEMALIGN, CALLER);              \
        return p;                                                 \
    }
ALIGNED_HOOK(aligned_alloc)
ALIGNED_HOOK(memalign)

EXPORT void *nwh_valloc(uint64_t n)
{
    void *p = nwr_valloc(n);
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_alloc(s, p, n, K_VALLOC, CALLER);
    return p;
}

EXPORT void *nwh_pvalloc(uint64_t n)
{
    void *p = nwr_pvalloc(n);
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_alloc(s, p, (n + 4095) & ~4095ULL, K_PVALLOC, CALLER);
    return p;
}

/* free: removal before the real free, so the address cannot be reused and sampled meanwhile. */
EXPORT void nwh_free(void *p)
{
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_free(s, p, F_FREE);
    nwr_free((uint64_t)p);
}

EXPORT void nwh_cfree(void *p)
{
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_free(s, p, F_FREE);
    nwr_cfree((uint64_t)p);
}

/* Only anonymous mappings are native memory (file mappings are the `file` category). */
#define MMAP_HOOK(name)                                                                                  \
    EXPORT void *nwh_##name(void *a, uint64_t len, uint64_t prot, uint64_t flags, uint64_t fd, uint64_t off) \
    {                                                                                                    \
        void *p = nwr_##name((uint64_t)a, len, prot, flags, fd, off);                                    \
        struct nw_state *s = on();                                                                       \
        if (unlikely(s != 0) && (flags & 0x20) && p != (void *)-1)                                        \
            note_alloc(s, p, len, K_MMAP, CALLER);                                                       \
        return p;                                                                                        \
    }
MMAP_HOOK(mmap)
MMAP_HOOK(mmap64)

EXPORT int nwh_munmap(void *a, uint64_t len)
{
    struct nw_state *s = on();
    if (unlikely(s != 0))
        note_free(s, a, F_MUNMAP);
    return (int)(intptr_t)nwr_munmap((uint64_t)a, len);
}

/* C++ operator new/delete, every variant: the size (or pointer) is the first argument; the others
 * (alignment, nothrow tag, sized delete's size) are passed on as they came. */
#define NEW_HOOK(sym)                                                   \
    REAL(sym, fn3);                                                     \
    EXPORT void *nwh_##sym(uint64_t n, uint64_t b, uint64_t c)          \
    {                                                                   \
        void *p = nwr_##sym(n, b, c);                                   \
        struct nw_state *s = on();                                      \
        if (unlikely(s != 0))                                           \
            note_alloc(s, p, n, K_NEW, CALLER);                         \
        return p;                                                       \
    }
#define DELETE_HOOK(sym)                                                \
    REAL(sym, fn3);                                                     \
    EXPORT void nwh_##sym(void *p, uint64_t b, uint64_t c)              \
    {                                                                   \
        struct nw_state *s = on();                                      \
        if (unlikely(s != 0))                                           \
            note_free(s, p, F_DELETE);                                  \
        nwr_##sym((uint64_t)p, b, c);                                   \
    }
NEW_HOOK(_Znwm)
NEW_HOOK(_Znam)
NEW_HOOK(_ZnwmRKSt9nothrow_t)
NEW_HOOK(_ZnamRKSt9nothrow_t)
NEW_HOOK(_ZnwmSt11align_val_t)
NEW_HOOK(_ZnamSt11align_val_t)
NEW_HOOK(_ZnwmSt11align_val_tRKSt9nothrow_t)
NEW_HOOK(_ZnamSt11align_val_tRKSt9nothrow_t)
DELETE_HOOK(_ZdlPv)
DELETE_HOOK(_ZdaPv)
DELETE_HOOK(_ZdlPvm)
DELETE_HOOK(_ZdaPvm)
DELETE_HOOK(_ZdlPvRKSt9nothrow_t)
DELETE_HOOK(_ZdaPvRKSt9nothrow_t)
DELETE_HOOK(_ZdlPvSt11align_val_t)
DELETE_HOOK(_ZdaPvSt11align_val_t)
DELETE_HOOK(_ZdlPvmSt11align_val_t)
DELETE_HOOK(_ZdaPvmSt11align_val_t)
DELETE_HOOK(_ZdlPvSt11align_val_tRKSt9nothrow_t)
DELETE_HOOK(_ZdaPvSt11align_val_tRKSt9nothrow_t)
