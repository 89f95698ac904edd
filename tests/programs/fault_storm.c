/* Page-fault-heavy workload for benchmarks/bench_agent.py: map MIB MiB, write one byte per page (each
 * write is a first-touch fault), unmap, ROUNDS times. Prints the elapsed CPU+wall seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    size_t n = (size_t)(argc > 1 ? atol(argv[1]) : 256) << 20;
    int rounds = argc > 2 ? atoi(argv[2]) : 8;
    double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    long faults = 0;
    for (int r = 0; r < rounds; r++) {
        volatile char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return 1;
        for (size_t i = 0; i < n; i += 4096) {
            p[i] = 1;
            faults++;
        }
        munmap((void *)p, n);
    }
    printf("%.6f %.6f %ld\n", now(CLOCK_MONOTONIC) - w0, now(CLOCK_PROCESS_CPUTIME_ID) - c0, faults);
    return 0;
}
