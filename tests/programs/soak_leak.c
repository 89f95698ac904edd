/* Leaks native memory at a steady rate until killed: the "rising floor" a soak run must fail on.
 * usage: soak_leak MIB_PER_S [CHUNK_KIB]
 * Every CHUNK_KIB/(MIB_PER_S*1024) seconds it mallocs CHUNK_KIB, touches every page and drops the
 * pointer. Deadlines are absolute (CLOCK_MONOTONIC) so the rate does not drift with scheduling delays.
 * Prints READY once started.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s MIB_PER_S [CHUNK_KIB]\n", argv[0]); return 2; }
    double mib_per_s = atof(argv[1]);
    long chunk_kib = argc > 2 ? atol(argv[2]) : 256;
    if (mib_per_s <= 0 || chunk_kib <= 0) { fprintf(stderr, "rate and chunk must be positive\n"); return 2; }
    long period_ns = (long)(chunk_kib / (mib_per_s * 1024.0) * 1e9);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    printf("READY %ld\n", period_ns);
    fflush(stdout);
    for (;;) {
        char *p = malloc(chunk_kib * 1024);
        if (!p) return 3;
        memset(p, 0x5a, chunk_kib * 1024);
        next.tv_nsec += period_ns;
        while (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
