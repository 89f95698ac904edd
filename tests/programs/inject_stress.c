/* Target for the in-process sampler's safety tests (issue 13): allocation stress that checks its own
 * work, plus the awkward things a process does while a sampler is put in and taken out.
 *
 * Waits for commands on stdin after printing "ready":
 *   "stress T N" : T threads, each N rounds over a ring of 512 blocks: malloc/calloc/realloc/
 *                  posix_memalign/aligned_alloc of pseudo-random sizes from its own seeded generator,
 *                  each block filled with a pattern derived from its sequence number and verified
 *                  (a wrong byte aborts) before it is freed. Replies "checksum=<sum> rounds=<n>": the
 *                  sum over every verified block, the same for every run with the same T and N.
 *   "fork"       : a child allocates and frees 100,000 blocks, checks them, exits 0 (or 3 on a bad
 *                  byte); replies "child=<exit status>"
 *   "exec"       : fork + exec of /bin/true; replies "exec=<exit status>"
 *   "dlopen PATH N": dlopen PATH and call its xalloc_leak(N) (which leaks N blocks of 1000 bytes);
 *                  replies "leaked=<bytes>"
 *   "signal N"   : a 200 us interval timer whose SIGALRM handler mallocs, fills and frees blocks,
 *                  while this thread runs "stress 1 N"; replies "checksum=... handled=<signals>".
 *                  The allocator is not async-signal-safe: the handler allocates only when this
 *                  thread is not inside an allocator call (in_alloc), as a correct program must.
 *   "leak N"     : N blocks of 4000 bytes kept by leak_site(); replies "leaked=<bytes>"
 *   "spawn"      : forks a child that leaks 40 blocks of 4000 bytes (leak_site) every 100 ms for 30 s,
 *                  then exits; replies "child=<pid>"
 *   "vfork S"    : vfork()s a child that sleeps S seconds before exiting: meanwhile this thread waits
 *                  in the kernel where a ptrace interrupt cannot stop it; replies "vforked"
 *   "hold-loader S": sleeps S seconds inside a dl_iterate_phdr callback (the loader's lock held);
 *                  replies "held"
 *   "hold-signal S": sleeps S seconds inside a SIGUSR1 handler; replies "held"
 *   "quit"
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RING 512

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

struct block {
    unsigned char *p;
    size_t len;
    uint64_t seq;
};

static void fill(unsigned char *p, size_t len, uint64_t seq)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(seq * 31 + i);
}

static uint64_t verify(const struct block *b)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < b->len; i++) {
        if (b->p[i] != (unsigned char)(b->seq * 31 + i)) {
            fprintf(stderr, "corrupt block seq %llu at %zu\n", (unsigned long long)b->seq, i);
            abort();
        }
        sum += b->p[i];
    }
    return sum + b->len;
}

static volatile sig_atomic_t in_alloc;

static unsigned char *allocate(uint64_t r, size_t len)
{
    void *p = NULL;
    in_alloc = 1;
    switch (r % 5) {
    case 0: p = malloc(len); break;
    case 1: p = calloc(1, len); break;
    case 2: if (posix_memalign(&p, 64, len) != 0) p = NULL; break;
    case 3: p = aligned_alloc(32, (len + 31) & ~(size_t)31); break;
    default: p = realloc(NULL, len); break;
    }
    in_alloc = 0;
    if (!p)
        abort();
    return p;
}

struct job {
    uint64_t seed;
    long rounds;
    uint64_t sum;
};

static void *stress(void *arg)
{
    struct job *j = arg;
    struct block ring[RING];
    memset(ring, 0, sizeof(ring));
    uint64_t s = j->seed, seq = 0, sum = 0;
    for (long r = 0; r < j->rounds; r++) {
        for (int k = 0; k < RING; k++) {
            struct block *b = &ring[k];
            uint64_t x = next_rand(&s);
            if (b->p) {
                if (x % 7 == 0) {  /* grow in place or move: contents must survive */
                    size_t keep = b->len;
                    size_t len = keep + 1 + (x >> 8) % 2048;
                    in_alloc = 1;
                    unsigned char *q = realloc(b->p, len);
                    in_alloc = 0;
                    if (!q)
                        abort();
                    struct block old = {q, keep, b->seq};
                    sum += verify(&old);
                    b->p = q;
                    b->len = len;
                    b->seq = ++seq;
                    fill(b->p, b->len, b->seq);
                    continue;
                }
                sum += verify(b);
                in_alloc = 1;
                free(b->p);
                in_alloc = 0;
            }
            b->len = 1 + (x >> 16) % (x % 64 == 0 ? 300000 : 4096);
            b->p = allocate(x >> 3, b->len);
            b->seq = ++seq;
            fill(b->p, b->len, b->seq);
        }
    }
    for (int k = 0; k < RING; k++)
        if (ring[k].p) {
            sum += verify(&ring[k]);
            free(ring[k].p);
        }
    j->sum = sum;
    return NULL;
}

static uint64_t run_stress(int threads, long rounds)
{
    pthread_t t[64];
    struct job jobs[64];
    if (threads > 64)
        threads = 64;
    for (int i = 0; i < threads; i++) {
        jobs[i] = (struct job){.seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1), .rounds = rounds};
        if (pthread_create(&t[i], NULL, stress, &jobs[i]) != 0)
            abort();
    }
    uint64_t sum = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        sum += jobs[i].sum;
    }
    return sum;
}

static volatile sig_atomic_t handled;

static void on_alarm(int sig)
{
    (void)sig;
    if (in_alloc)
        return;
    for (int i = 0; i < 8; i++) {
        unsigned char *p = malloc(64 + i * 100);
        if (!p)
            abort();
        struct block b = {p, 64 + (size_t)i * 100, (uint64_t)i};
        fill(p, b.len, b.seq);
        verify(&b);
        free(p);
    }
    handled++;
}

struct leak { struct leak *next; char pad[4000 - sizeof(void *)]; };
static struct leak *kept;

__attribute__((noinline)) static size_t leak_site(void)
{
    struct leak *l = malloc(sizeof(*l));
    if (!l)
        abort();
    memset(l, 1, sizeof(*l));
    l->next = kept;
    kept = l;
    return sizeof(*l);
}

static int hold_seconds;

static int sleep_in_callback(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)info;
    (void)size;
    (void)data;
    sleep((unsigned)hold_seconds);
    return 1;  /* one object is enough */
}

static void sleep_in_handler(int sig)
{
    (void)sig;
    sleep((unsigned)hold_seconds);
}

int main(void)
{
    char line[4096];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof(line), stdin)) {
        int threads = 0;
        long n = 0;
        char path[3000];
        if (sscanf(line, "stress %d %ld", &threads, &n) == 2) {
            uint64_t sum = run_stress(threads, n);
            printf("checksum=%llu rounds=%ld\n", (unsigned long long)sum, n);
        } else if (strncmp(line, "fork", 4) == 0) {
            pid_t c = fork();
            if (c == 0) {
                struct job j = {.seed = 12345, .rounds = 200};
                stress(&j);
                _exit(0);
            }
            int st = 0;
            waitpid(c, &st, 0);
            printf("child=%d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        } else if (strncmp(line, "exec", 4) == 0) {
            pid_t c = fork();
            if (c == 0) {
                execl("/bin/true", "true", (char *)NULL);
                _exit(127);
            }
            int st = 0;
            waitpid(c, &st, 0);
            printf("exec=%d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        } else if (sscanf(line, "dlopen %2999s %ld", path, &n) == 2) {
            void *h = dlopen(path, RTLD_NOW);
            size_t (*fn)(long) = h ? (size_t (*)(long))dlsym(h, "xalloc_leak") : NULL;
            if (!fn) {
                printf("error=%s\n", dlerror());
                continue;
            }
            printf("leaked=%zu\n", fn(n));
        } else if (sscanf(line, "signal %ld", &n) == 1) {
            struct sigaction sa;
            memset(&sa, 0, sizeof(sa));
            sa.sa_handler = on_alarm;
            sa.sa_flags = SA_RESTART;
            sigaction(SIGALRM, &sa, NULL);
            struct itimerval it = {{0, 200}, {0, 200}};
            setitimer(ITIMER_REAL, &it, NULL);
            struct job j = {.seed = 777, .rounds = n};
            stress(&j);
            struct itimerval off = {{0, 0}, {0, 0}};
            setitimer(ITIMER_REAL, &off, NULL);
            printf("checksum=%llu handled=%d\n", (unsigned long long)j.sum, (int)handled);
        } else if (sscanf(line, "leak %ld", &n) == 1) {
            size_t total = 0;
            for (long i = 0; i < n; i++)
                total += leak_site();
            printf("leaked=%zu\n", total);
        } else if (sscanf(line, "vfork %d", &hold_seconds) == 1) {
            pid_t c = vfork();
            if (c == 0) {
                struct timespec ts = {hold_seconds, 0};
                syscall(SYS_nanosleep, &ts, NULL);
                syscall(SYS_exit, 0);
            }
            waitpid(c, NULL, 0);
            printf("vforked\n");
        } else if (strncmp(line, "spawn", 5) == 0) {
            pid_t c = fork();
            if (c == 0) {
                for (int i = 0; i < 300; i++) {
                    for (int k = 0; k < 40; k++)
                        leak_site();
                    usleep(100000);
                }
                _exit(0);
            }
            printf("child=%d\n", (int)c);
        } else if (sscanf(line, "hold-loader %d", &hold_seconds) == 1) {
            dl_iterate_phdr(sleep_in_callback, NULL);
            printf("held\n");
        } else if (sscanf(line, "hold-signal %d", &hold_seconds) == 1) {
            signal(SIGUSR1, sleep_in_handler);
            raise(SIGUSR1);
            printf("held\n");
        } else if (strncmp(line, "quit", 4) == 0) {
            return 0;
        }
    }
    return 0;
}
