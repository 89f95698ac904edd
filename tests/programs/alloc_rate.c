/* A throughput-bound server in miniature: one thread serving "requests" flat out, each one a
 * malloc/free pair plus a fixed amount of compute, the compute calibrated at start so that the bare
 * program makes about CALLS_PER_S allocator calls a second (two calls a request).
 * usage: alloc_rate CALLS_PER_S [LEAK_KIB_PER_S]
 * With LEAK_KIB_PER_S a second thread also leaks that much (256 KiB blocks, touched), so a watcher
 * sees native memory rise while the first thread keeps the allocator hot.
 * Anything that slows its allocator calls (a probe) shows as lost requests per second.
 * stdin "mark" -> "pairs=<requests so far> ns=<CLOCK_MONOTONIC>"; prints "ready work=<iters>" once
 * calibrated and running.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile long pairs;
static long work_iters;

__attribute__((noinline)) static void *rate_site(size_t size)
{
    return malloc(size);
}

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

__attribute__((noinline)) static unsigned long compute(long iters)
{
    unsigned long x = 88172645463325252UL;
    for (long i = 0; i < iters; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static void *work(void *arg)
{
    (void)arg;
    for (long i = 0;; i++) {
        void *p = rate_site(32 + (i & 63));
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
        compute(work_iters);
        pairs++;
    }
    return NULL;
}

static void *leak(void *arg)
{
    long kib_per_s = *(long *)arg;
    long period = (long)(256.0 / kib_per_s * 1e9);
    long next = now_ns();
    for (;;) {
        char *p = malloc(256 * 1024);
        if (p)
            memset(p, 0x5a, 256 * 1024);
        next += period;
        struct timespec ts = {next / 1000000000L, next % 1000000000L};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double calls_per_s = argc > 1 ? atof(argv[1]) : 0;
    if (calls_per_s < 1000) {
        fprintf(stderr, "usage: %s CALLS_PER_S (>= 1000)\n", argv[0]);
        return 2;
    }
    /* ns of compute per request = the request's time budget minus what the pair itself costs */
    long t0 = now_ns();
    compute(20000000);
    double ns_per_iter = (now_ns() - t0) / 20000000.0;
    t0 = now_ns();
    for (long i = 0; i < 2000000; i++) {
        void *p = rate_site(32 + (i & 63));
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
    double pair_ns = (now_ns() - t0) / 2000000.0;
    double budget_ns = 2e9 / calls_per_s - pair_ns;
    work_iters = budget_ns > 0 ? (long)(budget_ns / ns_per_iter) : 0;
    pthread_t th;
    pthread_create(&th, NULL, work, NULL);
    static long leak_kib;
    leak_kib = argc > 2 ? atol(argv[2]) : 0;
    if (leak_kib > 0)
        pthread_create(&th, NULL, leak, &leak_kib);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready work=%ld\n", work_iters);
    char line[64];
    while (fgets(line, sizeof(line), stdin))
        if (strncmp(line, "mark", 4) == 0)
            printf("pairs=%ld ns=%ld\n", pairs, now_ns());
    return 0;
}
