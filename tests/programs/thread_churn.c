/* Thread churn for the agent's reliability tests: starts RATE short-lived threads a second, each
 * mallocs and writes 64 KiB (so glibc arenas and fresh stack pages fault), then exits. Prints
 * "ready", runs until killed. Usage: thread_churn RATE */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *work(void *arg) {
    (void)arg;
    char *p = malloc(64 * 1024);
    if (p) {
        memset(p, 1, 64 * 1024);
        free(p);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int rate = argc > 1 ? atoi(argv[1]) : 100;
    if (rate < 1)
        rate = 1;
    printf("ready\n");
    fflush(stdout);
    struct timespec gap = {0, 1000000000L / rate};
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, work, NULL) == 0)
            pthread_join(t, NULL);
        nanosleep(&gap, NULL);
    }
}
