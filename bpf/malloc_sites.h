/* Shared layout between bpf/malloc_sites.c and nativewatch/malloc_profile/probes.py.
 * Keep the structs' field order and the constants in sync with probes.py (it mirrors them with ctypes). */
#ifndef NATIVEWATCH_MALLOC_SITES_H
#define NATIVEWATCH_MALLOC_SITES_H

/* Attach cookies: which allocator entry point a probe sits on. */
#define K_MALLOC 1
#define K_CALLOC 2
#define K_REALLOC 3
#define K_REALLOCARRAY 4
#define K_POSIX_MEMALIGN 5
#define K_MEMALIGN 6 /* memalign, aligned_alloc: (alignment, size) */
#define K_VALLOC 7
#define K_PVALLOC 8
#define K_MMAP 9
#define K_NEW 10        /* C++ operator new family: (size, ...) */
#define F_FREE 1
#define F_MUNMAP 2
#define F_DELETE 3      /* C++ operator delete family */

/* counters[] slots */
#define C_EVENTS_LOST 0   /* a sampled call's return was never matched (nesting, longjmp, exit) */
#define C_MAP_FULL 1      /* allocs map full: sampled allocation not tracked */
#define C_UNMATCHED_FREE 2 /* exact mode: free/munmap of an address never seen allocated */
#define C_STACK_LOST 3    /* bpf_get_stackid failed: site keeps only the immediate caller */
#define C_SITES_FULL 4    /* sites map full */
#define C_SAMPLED 5       /* sampled allocations */
#define C_SKIPPED_MMAP 6  /* mmaps made by the allocator or libc themselves (not counted twice) */
#define C_COPY_LOST 7     /* stack copy wanted but the ring buffer was full: the site keeps the FP stack */
#define C_WALK_KNOWN 8    /* sampled calls whose stack matched a walk user space had unwound (no copy) */
#define N_COUNTERS 9

/* hits[] slots (per CPU): probe hits, for the cost governor */
#define H_ALLOC 0   /* allocating entry points */
#define H_FREE 1    /* free, munmap, delete */
#define H_RETURN 2  /* return halves */
#define N_HITS 4

#define WEIGHT_STEPS 256  /* weight table resolution: interval / 256 */
#define WEIGHT_SLOTS 4097 /* covers sizes [0, 16 * interval]; above that the weight is 1 */
#define EXP_SLOTS 1024
#define FX_SHIFT 16       /* fixed point for scaled counts */
#define MAX_SKIP_RANGES 16

/* Stack copies (STACK_COPY > 0): a sampled allocation whose stack was copied is tracked under the
 * site key {stackid = STACK_COPIED, kind, caller = sample id}; user space unwinds the copy and
 * aggregates those itself (they never enter the sites map). */
#define STACK_COPIED (-1000)
/* {stackid = STACK_WALKED, kind, caller = group}: the stack is one user space already unwound (the
 * walks map said so); such sites live in the sites map like frame-pointer ones. */
#define STACK_WALKED (-1001)

#define EV_SAMPLE 1   /* struct stack_event */
#define EV_CANCEL 2   /* struct cancel_event: the sampled call failed (NULL, MAP_FAILED) */

#endif
