/* Shared-memory buffer arena: size classes, owner free lists, freed stack. */
#include "core/pn_arena.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#define ARENA_MAGIC UINT64_C(0x616e657261706e31)   /* "1pnarena" */
#define BLOCK_MAGIC UINT64_C(0x6b636f6c62706e31)   /* "1pnblock" */
#define MIN_CAP 4096

uint64_t
pn_arena_round(uint64_t n, uint32_t *cls)
{
    if (n <= MIN_CAP) {
        *cls = 0;
        return MIN_CAP;
    }
    /* 2^p < n <= 2^(p+1); four steps of 2^(p-2) cover (2^p, 2^(p+1)]. */
    unsigned p = 63 - (unsigned)__builtin_clzll(n - 1);
    uint64_t step = UINT64_C(1) << (p - 2);
    uint64_t cap = (n + step - 1) & ~(step - 1);
    *cls = 1 + (p - 12) * 4 + (uint32_t)(cap / step - 5);
    return cap;
}

static pn_block *
block_at(unsigned char *base, uint64_t data_off)
{
    return (pn_block *)(base + data_off - PN_BLOCK_HDR);
}

void
pn_arena_init(pn_arena *a, void *base, uint64_t off, uint64_t size)
{
    memset(a, 0, sizeof(*a));
    a->base = base;
    a->off = off;
    a->size = size;
    a->bump = off + sizeof(pn_arena_hdr);
    pn_arena_hdr *h = (pn_arena_hdr *)(a->base + off);
    h->magic = ARENA_MAGIC;
    h->size = size;
    /* A new owner: nobody else holds blocks of this arena any more (the
     * previous owner is gone and its blocks were released by the parent). */
    atomic_store_explicit(&h->freed, 0, memory_order_relaxed);
}

uint64_t
pn_arena_reclaim(pn_arena *a)
{
    pn_arena_hdr *h = (pn_arena_hdr *)(a->base + a->off);
    /* Pairs with the release CAS in pn_arena_free: we see each pushed
     * block's next_freed link.  Taking the whole stack at once means the
     * pushers' CAS never meets a popped-and-repushed top (no ABA). */
    uint64_t top = atomic_exchange_explicit(&h->freed, 0,
                                            memory_order_acquire);
    uint64_t n = 0;
    while (top != 0) {
        pn_block *b = block_at(a->base, top);
        uint64_t next = b->next_freed;
        /* Only the owner moves FREED -> FREE; nobody else touches it. */
        atomic_store_explicit(&b->state, PN_BLOCK_FREE, memory_order_relaxed);
        b->next_free = a->free_head[b->cls];
        a->free_head[b->cls] = top;
        a->used -= b->cap;
        top = next;
        n++;
    }
    return n;
}

static uint64_t
take(pn_arena *a, uint32_t cls)
{
    uint64_t off = a->free_head[cls];
    pn_block *b = block_at(a->base, off);
    a->free_head[cls] = b->next_free;
    b->next_free = 0;
    atomic_store_explicit(&b->state, PN_BLOCK_USED, memory_order_relaxed);
    a->used += b->cap;
    return off;
}

uint64_t
pn_arena_alloc(pn_arena *a, uint64_t n)
{
    uint32_t cls;
    uint64_t cap = pn_arena_round(n, &cls);
    if (cls >= PN_ARENA_NCLASS) {
        return 0;
    }
    if (a->free_head[cls] == 0) {
        pn_arena_reclaim(a);
    }
    if (a->free_head[cls] != 0) {
        return take(a, cls);
    }
    uint64_t end = a->off + a->size;
    if (a->bump + PN_BLOCK_HDR + cap <= end) {
        uint64_t data = a->bump + PN_BLOCK_HDR;
        pn_block *b = block_at(a->base, data);
        b->magic = BLOCK_MAGIC;
        b->cap = cap;
        b->cls = cls;
        b->arena_off = a->off;
        b->next_freed = 0;
        b->next_free = 0;
        b->touched = 0;
        atomic_store_explicit(&b->state, PN_BLOCK_USED, memory_order_relaxed);
        a->bump = data + cap;
        a->used += cap;
        return data;
    }
    /* Out of fresh space: a bigger free block beats waiting. */
    for (uint32_t c = cls + 1; c < PN_ARENA_NCLASS; c++) {
        if (a->free_head[c] != 0) {
            return take(a, c);
        }
    }
    return 0;
}

static pn_block *
checked_block(void *base, uint64_t size, uint64_t data_off)
{
    unsigned char *p = base;
    if (data_off < PN_BLOCK_HDR || data_off > size || (data_off & 63) != 0) {
        return NULL;
    }
    pn_block *b = block_at(p, data_off);
    if (b->magic != BLOCK_MAGIC || b->cap > size - data_off
        || b->arena_off > size - sizeof(pn_arena_hdr)) {
        return NULL;
    }
    pn_arena_hdr *h = (pn_arena_hdr *)(p + b->arena_off);
    if (h->magic != ARENA_MAGIC) {
        return NULL;
    }
    return b;
}

int
pn_arena_block_state(void *base, uint64_t size, uint64_t data_off)
{
    pn_block *b = checked_block(base, size, data_off);
    if (b == NULL) {
        return -EINVAL;
    }
    return (int)atomic_load_explicit(&b->state, memory_order_acquire);
}

int
pn_arena_free(void *base, uint64_t size, uint64_t data_off)
{
    pn_block *b = checked_block(base, size, data_off);
    if (b == NULL) {
        return -EINVAL;
    }
    uint32_t expect = PN_BLOCK_USED;
    /* Exactly one freer wins (a worker releasing its view and the parent
     * cleaning up after that worker died may race). */
    if (!atomic_compare_exchange_strong_explicit(
            &b->state, &expect, PN_BLOCK_FREED, memory_order_acq_rel,
            memory_order_relaxed)) {
        return 0;
    }
    pn_arena_hdr *h = (pn_arena_hdr *)((unsigned char *)base + b->arena_off);
    uint64_t top = atomic_load_explicit(&h->freed, memory_order_relaxed);
    do {
        b->next_freed = top;
        /* Pairs with the acquire exchange in pn_arena_reclaim. */
    } while (!atomic_compare_exchange_weak_explicit(
        &h->freed, &top, data_off, memory_order_release,
        memory_order_relaxed));
    atomic_fetch_add_explicit(&h->nfree_calls, 1, memory_order_relaxed);
    return 1;
}

uint64_t
pn_arena_touched(pn_arena *a, uint64_t data_off, uint64_t n)
{
    pn_block *b = block_at(a->base, data_off);
    uint64_t before = b->touched;
    if (n > before) {
        b->touched = n;
    }
    return before;
}
