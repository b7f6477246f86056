/*
 * alloc.h: growing a heap array by doubling, the one way every module appends
 * to an array whose final length it does not know (tensors of a header, the
 * pointers a backend owns, memoised grammar nodes, per-principal counters).
 * Owner: src/core (alloc.c).
 */
#ifndef DSINFER_ALLOC_H
#define DSINFER_ALLOC_H

#include <stddef.h>

/* Makes room for element n of the heap array p that has room for *cap elements
 * of elem_bytes each. While n < *cap, returns p as it is. Otherwise reallocates
 * it to twice *cap elements (first when *cap is 0), sets *cap and returns the
 * new array, which replaces p. NULL when out of memory or when the size would
 * overflow: p and *cap are then unchanged and p is still the caller's. */
void *dsi_grow(void *p, size_t n, size_t *cap, size_t elem_bytes, size_t first);

#endif
