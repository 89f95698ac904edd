/* Looks like Node (-DFAKE_NODE) or CPython (-DFAKE_PYTHON) to a symbol lookup, but has neither heap.
 * Built with -rdynamic so the marker symbols are exported as the real interpreters export them.
 *
 * It holds 64 MiB of plain malloc'd memory and plants what a careless reader would take for the
 * runtime's heap in places that are not the malloc pool: V8 page headers (every field consistent,
 * the pointer back to the page included) at 256 KiB boundaries inside the main thread's stack, a
 * MAP_SHARED anonymous mapping and a private file mapping; an "arena table" whose entries point at
 * the shared mapping. None of it may be counted as heap. With -DPLANT_ANON one more header goes into
 * a private anonymous mapping, where V8 really keeps its pages: the control that shows the planted
 * headers are ones the reader accepts. Prints READY, then sleeps until killed. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE_ALIGN (256u << 10)

#ifdef FAKE_NODE
void napi_create_object(void) {}
void node_module_register(void) {}
#endif
#ifdef FAKE_PYTHON
char _PyRuntime[4096];
const unsigned long Py_Version = 0x030B04F0;
void Py_InitializeEx(int x) { (void)x; }
#endif

void *volatile sink[8];

static void plant_v8(char *region, size_t len) {
    uintptr_t a = ((uintptr_t)region + PAGE_ALIGN - 1) & ~(uintptr_t)(PAGE_ALIGN - 1);
    if (a + 128 > (uintptr_t)region + len) return;
    uint64_t *w = (uint64_t *)a;
    w[0] = PAGE_ALIGN;               /* size */
    w[1] = 0;                        /* flags */
    w[2] = 0x555500001000ull;        /* Heap* */
    w[3] = a + 0x140;                /* area_start */
    w[4] = a + PAGE_ALIGN;           /* area_end */
    w[10] = a;                       /* the reservation's pointer back */
}

static void plant_arena_table(char *shared) {
    uint64_t *t = malloc(16 * 48);
    for (int i = 0; i < 16; i++) {
        uint64_t *e = (uint64_t *)((char *)t + i * 48);
        e[0] = (uintptr_t)shared + (uint64_t)i * (1 << 20);    /* address */
        e[1] = e[0] + 4096;                                     /* pool_address */
        ((uint32_t *)&e[2])[0] = 3;                             /* nfreepools */
        ((uint32_t *)&e[2])[1] = 64;                            /* ntotalpools */
        e[3] = e[4] = e[5] = 0;
    }
#ifdef FAKE_PYTHON
    memcpy(_PyRuntime + 64, &t, sizeof t);
    uint32_t n = 16;
    memcpy(_PyRuntime + 72, &n, sizeof n);
#endif
    sink[0] = t;
}

static void hold(void) {
    size_t stack_len = 768u << 10;
    char *on_stack = alloca(stack_len);
    memset(on_stack, 1, stack_len);
    plant_v8(on_stack, stack_len);

    size_t shared_len = 16u << 20;
    char *shared = mmap(NULL, shared_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) { perror("mmap shared"); exit(1); }
    memset(shared, 1, shared_len);
    plant_v8(shared, shared_len);
    plant_arena_table(shared);

    FILE *f = tmpfile();
    if (!f || ftruncate(fileno(f), 1 << 20) != 0) { perror("tmpfile"); exit(1); }
    char *filemap = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE, fileno(f), 0);
    if (filemap == MAP_FAILED) { perror("mmap file"); exit(1); }
    memset(filemap, 1, 1 << 20);
    plant_v8(filemap, 1 << 20);

#ifdef PLANT_ANON
    char *anon = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED) { perror("mmap anon"); exit(1); }
    memset(anon, 1, 1 << 20);
    plant_v8(anon, 1 << 20);
    sink[3] = anon;
#endif

    size_t n = 64u << 20;
    char *p = malloc(n);
    memset(p, 2, n);
    sink[1] = p;
    sink[2] = on_stack;
    printf("READY\n");
    fflush(stdout);
    for (;;) pause();
}

int main(void) {
    hold();
    return 0;
}
