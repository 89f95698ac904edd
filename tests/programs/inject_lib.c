/* A library a target dlopens after the sampler was put in (issue 13): its own calls to malloc go
 * through its own GOT, which must be patched when it appears. */
#include <stdlib.h>
#include <string.h>

struct node { struct node *next; char pad[1000 - sizeof(void *)]; };
static struct node *kept;

__attribute__((noinline)) size_t xalloc_leak(long n)
{
    size_t total = 0;
    for (long i = 0; i < n; i++) {
        struct node *p = malloc(sizeof(*p));
        if (!p)
            abort();
        memset(p, 2, sizeof(*p));
        p->next = kept;
        kept = p;
        total += sizeof(*p);
    }
    return total;
}
