/* Leaks through a wrapper in a shared library, everything built -O2 -fomit-frame-pointer as
 * distributions build (issue 11). The allocating chain is
 *     malloc <- my_xmalloc (libxalloc) <- leaky_cache_insert <- run_loop <- main
 * and a frame-pointer walk of it stops at my_xmalloc's caller at best.
 *
 * Commands on stdin (replies are the ground truth):
 *   "go N"      : run_loop(N): N retained inserts of 512..8191 bytes, plus churn that is freed again
 *   "deep N D"  : the same N inserts from D nested frames of ~1 KiB each (stacks deeper than a copy)
 *   "par N"     : 2 threads each doing "go N"
 *   "quit"
 * Replies "done leaked=<bytes> allocs=<n>". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *my_xmalloc(size_t n);
void my_xfree(void *p, size_t n);

struct entry { struct entry *next; size_t len; char data[]; };
static __thread struct entry *cache_head;
static __thread unsigned long rng = 88172645463325252UL;

static unsigned long next_rand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

__attribute__((noipa)) size_t leaky_cache_insert(size_t len)
{
    struct entry *e = my_xmalloc(sizeof(*e) + len);
    memset(e->data, 0x5a, len);
    e->len = len;
    e->next = cache_head;
    cache_head = e;
    return sizeof(*e) + len;
}

__attribute__((noipa)) void churn_work(int n)
{
    for (int i = 0; i < n; i++) {
        size_t len = 16 + next_rand() % 4096;
        char *p = my_xmalloc(len);
        p[0] = (char)i;
        my_xfree(p, len);
    }
}

__attribute__((noipa)) size_t run_loop(long rounds)
{
    size_t leaked = 0;
    for (long i = 0; i < rounds; i++) {
        leaked += leaky_cache_insert(512 + next_rand() % 7680);
        churn_work(4);
    }
    return leaked;
}

__attribute__((noipa)) size_t descend(int depth, long rounds)
{
    volatile char pad[1000];
    pad[0] = (char)depth;
    size_t r = depth > 0 ? descend(depth - 1, rounds) : run_loop(rounds);
    pad[1] = (char)r;  /* after the call: keeps the frame (and its 1000 bytes) on the stack */
    return r;
}

static void *par_worker(void *p)
{
    long *rounds = p;
    rng ^= (unsigned long)(size_t)p;
    *rounds = (long)run_loop(*rounds);
    return NULL;
}

int main(void)
{
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof(line), stdin)) {
        long n = 0, d = 0;
        if (sscanf(line, "go %ld", &n) == 1) {
            size_t leaked = run_loop(n);
            printf("done leaked=%zu allocs=%ld\n", leaked, n);
        } else if (sscanf(line, "deep %ld %ld", &n, &d) == 2) {
            size_t leaked = descend((int)d, n);
            printf("done leaked=%zu allocs=%ld\n", leaked, n);
        } else if (sscanf(line, "par %ld", &n) == 1) {
            pthread_t t[2];
            long r[2] = {n, n};
            for (int i = 0; i < 2; i++)
                pthread_create(&t[i], NULL, par_worker, &r[i]);
            for (int i = 0; i < 2; i++)
                pthread_join(t[i], NULL);
            printf("done leaked=%ld allocs=%ld\n", r[0] + r[1], 2 * n);
        } else if (strncmp(line, "quit", 4) == 0) {
            return 0;
        } else {
            printf("error unknown command\n");
        }
    }
    return 0;
}
