/* The allocation wrapper of wrapped_leak.c, in its own shared library (issue 11): like redis's
 * zmalloc or HotSpot's os::malloc, every allocation of the program goes through it, so "the
 * immediate caller of malloc" is always this library. Built -O2 -fomit-frame-pointer. */
#include <stdlib.h>

static unsigned long xalloc_bytes;

__attribute__((noipa)) void *my_xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        abort();
    xalloc_bytes += n;  /* work after the call: no tail call, so this frame is on the stack */
    return p;
}

__attribute__((noipa)) void my_xfree(void *p, size_t n)
{
    xalloc_bytes -= n;
    free(p);
}

unsigned long my_xalloc_bytes(void)
{
    return xalloc_bytes;
}
