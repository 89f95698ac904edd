/* Benchmark target: times malloc/free pairs in one process so probe configurations can be compared
 * side by side. Reads "run N SIZE" lines on stdin, answers "ns_per_pair=<float>". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) static void *pair_site(size_t size)
{
    return malloc(size);
}

int main(void)
{
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof(line), stdin)) {
        long n = 0, size = 0;
        if (sscanf(line, "run %ld %ld", &n, &size) != 2)
            continue;
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++) {
            void *p = pair_site((size_t)size);
            __asm__ volatile("" : : "r"(p) : "memory");
            free(p);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
        printf("ns_per_pair=%.2f\n", ns / n);
    }
    return 0;
}
