/* Holds a fixed amount of native memory and some threads, prints READY, then sleeps until killed:
 * a process whose numbers must not move while a test compares two views of it.
 * usage: tui_hold NATIVE_MIB THREADS [ANY...]   (extra arguments are a marker tests search for)
 * The memory is malloc'd in 1 MiB chunks (each its own mapping) and every page is written.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *idle(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s NATIVE_MIB THREADS [MARKER...]\n", argv[0]); return 2; }
    long mib = atol(argv[1]), threads = atol(argv[2]);
    for (long i = 0; i < mib; i++) {
        char *p = malloc(1024 * 1024);
        if (!p) return 3;
        memset(p, 0x5a, 1024 * 1024);
    }
    for (long i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, idle, NULL) != 0) return 4;
    }
    printf("READY\n");
    fflush(stdout);
    for (;;) pause();
}
