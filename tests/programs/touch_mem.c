/* Holds a known amount of memory of each kind, so cgroup memory figures can be checked against it.
 *
 * usage: touch_mem ANON_MIB FILE_MIB SHMEM_MIB [FILE_PATH]
 * Prints "ready <pid>", waits for one line on stdin (time for the test to move it into a cgroup, so
 * every page below is charged there), then touches ANON_MIB of malloc'd memory, writes FILE_MIB to
 * FILE_PATH (page cache) and touches SHMEM_MIB of a memfd (shmem), prints "touched" and sleeps until
 * stdin reaches EOF. Pages are touched one byte per page with a non-zero value so none is shared. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024L * 1024L)

static void touch(volatile char *p, long bytes) {
    long page = sysconf(_SC_PAGESIZE);
    for (long off = 0; off < bytes; off += page)
        p[off] = 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s ANON_MIB FILE_MIB SHMEM_MIB [FILE_PATH]\n", argv[0]);
        return 2;
    }
    long anon = atol(argv[1]) * MIB, file = atol(argv[2]) * MIB, shmem = atol(argv[3]) * MIB;
    char line[64];
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;

    if (anon > 0) {
        char *buf = malloc(anon);
        if (!buf) { perror("malloc"); return 1; }
        touch(buf, anon);
    }
    if (file > 0) {
        if (argc < 5) { fprintf(stderr, "FILE_MIB needs FILE_PATH\n"); return 2; }
        int fd = open(argv[4], O_CREAT | O_TRUNC | O_WRONLY, 0600);
        if (fd < 0) { perror("open"); return 1; }
        static char chunk[1 << 20];
        memset(chunk, 'x', sizeof chunk);
        for (long done = 0; done < file; done += sizeof chunk)
            if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk) { perror("write"); return 1; }
        close(fd);
    }
    if (shmem > 0) {
        int fd = memfd_create("touch_mem", 0);
        if (fd < 0 || ftruncate(fd, shmem) != 0) { perror("memfd"); return 1; }
        char *p = mmap(NULL, shmem, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        touch(p, shmem);
    }
    printf("touched\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
