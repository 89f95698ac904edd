/* Holds known amounts of memory in each category, prints READY, then sleeps until killed.
 * usage: holdings MALLOC_MIB MMAP_MIB THREADS STACK_KIB FILE FILE_MIB SHM_MIB MEMFD_MIB
 * - MALLOC_MIB: malloc'd in 64 KiB chunks (below the mmap threshold: lands in [heap]) and touched
 * - MMAP_MIB: one private anonymous mmap, touched
 * - THREADS x STACK_KIB: each thread touches STACK_KIB of its own stack, then blocks
 * - FILE_MIB of FILE mapped read-only and read page by page
 * - SHM_MIB of a POSIX shm object (/dev/shm) and MEMFD_MIB of a memfd, mapped shared and touched
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024L * 1024L)
static long stack_kib;
static pthread_barrier_t ready;

static void touch(volatile char *p, long n) {
    for (long i = 0; i < n; i += 4096) p[i] = 1;
}

static void *thread_main(void *arg) {
    (void)arg;
    volatile char *buf = alloca(stack_kib * 1024);
    touch(buf, stack_kib * 1024);
    pthread_barrier_wait(&ready);
    for (;;) pause();
    return NULL;
}

static void *map_shared_fd(int fd, long bytes) {
    if (ftruncate(fd, bytes) != 0) { perror("ftruncate"); exit(2); }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap shared"); exit(2); }
    touch(p, bytes);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 9) { fprintf(stderr, "usage: %s MALLOC MMAP THREADS STACK_KIB FILE FILE_MIB SHM MEMFD\n", argv[0]); return 2; }
    long malloc_mib = atol(argv[1]), mmap_mib = atol(argv[2]), threads = atol(argv[3]);
    stack_kib = atol(argv[4]);
    const char *file = argv[5];
    long file_mib = atol(argv[6]), shm_mib = atol(argv[7]), memfd_mib = atol(argv[8]);

    for (long i = 0; i < malloc_mib * 16; i++) {
        char *p = malloc(64 * 1024);
        if (!p) return 3;
        memset(p, 1, 64 * 1024);
    }
    if (mmap_mib) {
        char *m = mmap(NULL, mmap_mib * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return 4;
        touch(m, mmap_mib * MIB);
    }
    if (file_mib) {
        int fd = open(file, O_RDONLY);
        if (fd < 0) { perror("open"); return 5; }
        volatile char *f = mmap(NULL, file_mib * MIB, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f == MAP_FAILED) return 5;
        long sum = 0;
        for (long i = 0; i < file_mib * MIB; i += 4096) sum += f[i];
        if (sum == -1) puts("");
    }
    if (shm_mib) {
        char name[64];
        snprintf(name, sizeof name, "/nw-holdings-%d", getpid());
        int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
        if (fd < 0) { perror("shm_open"); return 6; }
        shm_unlink(name); /* keep the mapping, leave nothing behind in /dev/shm */
        map_shared_fd(fd, shm_mib * MIB);
    }
    if (memfd_mib) {
        int fd = memfd_create("nw-holdings", 0);
        if (fd < 0) { perror("memfd_create"); return 7; }
        map_shared_fd(fd, memfd_mib * MIB);
    }
    pthread_barrier_init(&ready, NULL, (unsigned)threads + 1);
    for (long i = 0; i < threads; i++) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, (stack_kib + 256) * 1024);
        if (pthread_create(&t, &a, thread_main, NULL) != 0) return 8;
    }
    pthread_barrier_wait(&ready);
    printf("READY %d\n", getpid());
    fflush(stdout);
    for (;;) pause();
}
