/* Allocation-site test target for `nativewatch profile` (issue 3).
 *
 * Waits for a command line on stdin so the test can attach probes first, then does the work and
 * prints the ground truth it created:
 *   "go N"    : N rounds of leaky_cache_insert (retained) + churn_work (freed again)
 *   "mmap N"  : N anonymous mmaps of 256 KiB retained by leaky_mmap_region
 *   "big N"   : N mallocs of 200 KiB retained by leaky_big_insert (glibc serves them with mmap)
 *   "par N"   : 4 threads, each doing "go N"; replies with the sum
 *   "jit N"   : N mallocs of 1000 bytes retained, called from generated code named "jit_leaker"
 *               in /tmp/perf-<pid>.map (how JITs name their code for profilers)
 *   "quit"    : exit(0)
 * Replies "done leaked=<bytes> allocs=<n> churned=<bytes>" or "mapped=<bytes> maps=<n>". Stays
 * alive until "quit" or EOF so a profile can look at outstanding memory. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

struct entry { struct entry *next; size_t len; char data[]; };
static __thread struct entry *cache_head;  /* per thread: "par" runs it from several threads */
static __thread unsigned long rng = 88172645463325252UL;

static unsigned long next_rand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

__attribute__((noinline)) size_t leaky_cache_insert(size_t len)
{
    struct entry *e = malloc(sizeof(*e) + len);
    if (!e) abort();
    memset(e->data, 0x5a, len);
    e->len = len;
    e->next = cache_head;
    cache_head = e;
    return sizeof(*e) + len;
}

__attribute__((noinline)) size_t churn_work(int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t len = 16 + next_rand() % 4096;
        char *p = malloc(len);
        if (!p) abort();
        p[0] = (char)i;
        total += len;
        char *q = calloc(1, len / 2 + 1);
        q = realloc(q, len);
        free(p);
        free(q);
    }
    return total;
}

__attribute__((noinline)) size_t leaky_mmap_region(size_t len)
{
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) abort();
    memset(p, 1, len);
    return len;
}

__attribute__((noinline)) size_t leaky_big_insert(size_t len)
{
    struct entry *e = malloc(sizeof(*e) + len);
    if (!e) abort();
    memset(e->data, 0x33, len);
    e->len = len;
    e->next = cache_head;
    cache_head = e;
    return sizeof(*e) + len;
}

struct par_arg { long rounds; size_t leaked; };

static void *par_worker(void *p)
{
    struct par_arg *a = p;
    rng ^= (unsigned long)(size_t)p;
    for (long i = 0; i < a->rounds; i++) {
        a->leaked += leaky_cache_insert(512 + next_rand() % 7680);
        churn_work(20);
    }
    return NULL;
}

typedef void *(*jit_fn)(size_t);

static jit_fn make_jit_leaker(void)
{
    /* movabs $malloc,%rax; sub $8,%rsp; call *%rax; add $8,%rsp; ret */
    unsigned char code[] = {0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0x48, 0x83, 0xec, 0x08, 0xff, 0xd0,
                            0x48, 0x83, 0xc4, 0x08, 0xc3};
    void *(*target)(size_t) = malloc;
    memcpy(code + 2, &target, sizeof(target));
    unsigned char *mem = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) abort();
    memcpy(mem + 64, code, sizeof(code));
    char path[64];
    snprintf(path, sizeof(path), "/tmp/perf-%d.map", (int)getpid());
    FILE *f = fopen(path, "w");
    if (!f) abort();
    fprintf(f, "%lx %zx jit_leaker\n", (unsigned long)(mem + 64), sizeof(code));
    fclose(f);
    return (jit_fn)(void *)(mem + 64);
}

int main(void)
{
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof(line), stdin)) {
        long n = 0;
        if (sscanf(line, "go %ld", &n) == 1) {
            size_t leaked = 0, churned = 0;
            for (long i = 0; i < n; i++) {
                leaked += leaky_cache_insert(512 + next_rand() % 7680);
                churned += churn_work(20);
            }
            printf("done leaked=%zu allocs=%ld churned=%zu\n", leaked, n, churned);
        } else if (sscanf(line, "mmap %ld", &n) == 1) {
            size_t mapped = 0;
            for (long i = 0; i < n; i++)
                mapped += leaky_mmap_region(256 * 1024);
            printf("mapped=%zu maps=%ld\n", mapped, n);
        } else if (sscanf(line, "big %ld", &n) == 1) {
            size_t big = 0;
            for (long i = 0; i < n; i++)
                big += leaky_big_insert(200 * 1024);
            printf("big=%zu\n", big);
        } else if (sscanf(line, "par %ld", &n) == 1) {
            pthread_t t[4];
            struct par_arg args[4];
            size_t leaked = 0;
            for (int i = 0; i < 4; i++) {
                args[i].rounds = n;
                args[i].leaked = 0;
                pthread_create(&t[i], NULL, par_worker, &args[i]);
            }
            for (int i = 0; i < 4; i++) {
                pthread_join(t[i], NULL);
                leaked += args[i].leaked;
            }
            printf("done leaked=%zu allocs=%ld\n", leaked, 4 * n);
        } else if (sscanf(line, "jit %ld", &n) == 1) {
            static jit_fn fn;
            if (!fn) fn = make_jit_leaker();
            size_t total = 0;
            for (long i = 0; i < n; i++) {
                struct entry *e = fn(1000);
                e->next = cache_head;
                cache_head = e;
                total += 1000;
            }
            printf("jit=%zu\n", total);
        } else if (strncmp(line, "quit", 4) == 0) {
            return 0;
        }
    }
    return 0;
}
