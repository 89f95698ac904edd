/* Benchmark target: N threads that allocate and free in short bursts with pauses (a thread pool of a
 * busy server), for measuring how long stopping every thread takes. usage: many_threads N
 * Prints "ready" once every thread runs; exits at EOF on stdin. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *work(void *arg)
{
    (void)arg;
    for (;;) {
        for (int i = 0; i < 100; i++) {
            void *p = malloc(64 + (size_t)i * 8);
            __asm__ volatile("" : : "r"(p) : "memory");
            free(p);
        }
        usleep(1000);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 64;
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, work, NULL) != 0)
            return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    char line[64];
    while (fgets(line, sizeof(line), stdin))
        ;
    return 0;
}
