/* Workloads for the agent tests (issue 6). Prints "ready" once set up, then runs until killed.
 *   agent_load leak RATE_KIB_PER_S     malloc+touch RATE KiB/s in 256 KiB blocks, never freed
 *   agent_load leakset RATE_KIB_PER_S  the same, but the pages are written by libc's memset (a
 *                                      frameless leaf) called from leak_memset
 *   agent_load sawtooth PEAK_MIB PERIOD_S  ramp up to PEAK MiB over PERIOD s, free everything, repeat
 *   agent_load hold MIB                malloc+touch MIB MiB once, then sleep
 * Pages are written by the noinline functions below (not memset) so a frame-pointer user stack taken
 * at the page fault starts in them. Build with -O1 -fno-omit-frame-pointer. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (256 * 1024)
#define PAGE 4096

static volatile char sink;

__attribute__((noinline)) void leak_grow(char *p, size_t n) {
    for (size_t i = 0; i < n; i += PAGE)
        ((volatile char *)p)[i] = (char)i;
    sink = p[0];
}

__attribute__((noinline)) void leak_memset(char *p, size_t n) {
    memset(p, (int)(n & 0x7f) | 1, n);
    sink = p[n - 1];
}

__attribute__((noinline)) void sawtooth_fill(char *p, size_t n) {
    for (size_t i = 0; i < n; i += PAGE)
        ((volatile char *)p)[i] = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
    double d = t - now_s();
    if (d > 0) {
        struct timespec ts = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s leak KIB_PER_S | sawtooth PEAK_MIB PERIOD_S | hold MIB\n", argv[0]);
        return 2;
    }
    /* A fixed mmap threshold: blocks are their own mappings and go back to the kernel on free. */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    int use_memset = strcmp(argv[1], "leakset") == 0;
    if (strcmp(argv[1], "leak") == 0 || use_memset) {
        double rate = atof(argv[2]) * 1024.0; /* bytes per second */
        double start = now_s(), owed = 0;
        printf("ready\n");
        fflush(stdout);
        for (long tick = 1;; tick++) {
            sleep_until(start + tick * 0.1);
            owed += rate * 0.1;
            while (owed >= BLOCK) {
                char *p = malloc(BLOCK - 64); /* header + data stay within 64 pages */
                if (!p)
                    return 3;
                if (use_memset)
                    leak_memset(p, BLOCK - 64);
                else
                    leak_grow(p, BLOCK - 64);
                owed -= BLOCK;
            }
        }
    } else if (strcmp(argv[1], "sawtooth") == 0 && argc >= 4) {
        size_t peak = (size_t)atol(argv[2]) * 1024 * 1024;
        double period = atof(argv[3]);
        size_t nblocks = peak / BLOCK;
        char **blocks = calloc(nblocks, sizeof(char *));
        double start = now_s();
        printf("ready\n");
        fflush(stdout);
        for (long cycle = 0;; cycle++) {
            for (size_t i = 0; i < nblocks; i++) {
                sleep_until(start + cycle * period + period * 0.9 * (double)(i + 1) / (double)nblocks);
                blocks[i] = malloc(BLOCK - 64);
                sawtooth_fill(blocks[i], BLOCK - 64);
            }
            sleep_until(start + (cycle + 1) * period);
            for (size_t i = 0; i < nblocks; i++)
                free(blocks[i]);
        }
    } else if (strcmp(argv[1], "hold") == 0) {
        size_t n = (size_t)atol(argv[2]) * 1024 * 1024;
        char *p = malloc(n);
        if (!p)
            return 3;
        leak_grow(p, n);
        printf("ready\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    fprintf(stderr, "bad mode\n");
    return 2;
}
