/* A healthy process whose native memory is a sawtooth: it grows to PEAK_MIB over RAMP_S seconds,
 * frees everything, stays low for LOW_S seconds, and repeats until killed. Its floor does not rise,
 * but a straight line through the samples tilts with wherever a window cuts the teeth.
 * usage: soak_sawtooth PEAK_MIB RAMP_S LOW_S
 * The mmap threshold is pinned at 64 KiB so each 1 MiB chunk is its own mapping and free() really
 * returns it to the kernel (glibc would otherwise raise the threshold after the first free).
 * Prints READY once started.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIB (1024L * 1024L)

static void sleep_until(struct timespec *t, long add_ns) {
    t->tv_nsec += add_ns;
    while (t->tv_nsec >= 1000000000L) { t->tv_nsec -= 1000000000L; t->tv_sec++; }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s PEAK_MIB RAMP_S LOW_S\n", argv[0]); return 2; }
    long peak = atol(argv[1]);
    double ramp_s = atof(argv[2]), low_s = atof(argv[3]);
    if (peak <= 0 || ramp_s <= 0 || low_s < 0) { fprintf(stderr, "bad arguments\n"); return 2; }
    mallopt(M_MMAP_THRESHOLD, 64 * 1024);
    char **chunks = calloc(peak, sizeof *chunks);
    if (!chunks) return 3;
    long step_ns = (long)(ramp_s / peak * 1e9);
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    printf("READY\n");
    fflush(stdout);
    for (;;) {
        for (long i = 0; i < peak; i++) {
            chunks[i] = malloc(MIB);
            if (!chunks[i]) return 3;
            memset(chunks[i], 0x5a, MIB);
            sleep_until(&t, step_ns);
        }
        for (long i = 0; i < peak; i++) free(chunks[i]);
        sleep_until(&t, (long)(low_s * 1e9));
    }
}
