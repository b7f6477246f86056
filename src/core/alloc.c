/*
 * alloc.c: dsi_grow, doubling growth of heap arrays (see alloc.h). The element
 * count and the byte size are checked before realloc, so a runaway count fails
 * with NULL instead of wrapping around to a short allocation.
 */
#include "dsinfer/alloc.h"

#include <stdint.h>
#include <stdlib.h>

void *dsi_grow(void *p, size_t n, size_t *cap, size_t elem_bytes, size_t first) {
    if (n < *cap) return p;
    if (elem_bytes == 0 || first == 0) return NULL;
    size_t want = *cap ? *cap : first;
    if (*cap) {
        if (want > SIZE_MAX / 2) return NULL;
        want *= 2;
    }
    if (want > SIZE_MAX / elem_bytes) return NULL;
    void *q = realloc(p, want * elem_bytes);
    if (!q) return NULL;
    *cap = want;
    return q;
}
