/* A buffer arena in shared memory: one owner allocates, anyone frees. */
#ifndef PN_ARENA_H
#define PN_ARENA_H

/* Large pickle bodies and pickle-5 out-of-band buffers travel in arena
 * blocks.  Each arena has exactly one owning process that allocates from it
 * (the parent for task arguments, a worker for its results); any process
 * frees a block by flipping its state with a CAS and pushing it on the
 * arena's lock-free freed stack, which the owner takes whole on its next
 * allocation and sorts into per-size-class free lists.  Blocks are reused,
 * so memory stays flat however many tasks pass through.
 *
 * Size classes: everything up to 4 KiB is one class; above, four classes
 * per power of two (at most 25% slack).  When the bump space runs out, a
 * free block of a larger class is used.  A process that dies mid-free
 * leaves the block either USED or FREED-and-pushed, never half-linked: the
 * push is one CAS. */

#include <stdint.h>

#define PN_ARENA_NCLASS 128
#define PN_BLOCK_HDR 64

enum {
    PN_BLOCK_FREE = 0,      /* in the owner's free list (or never used) */
    PN_BLOCK_USED = 1,
    PN_BLOCK_FREED = 2,     /* released; on the freed stack */
};

/* At the start of each arena, in shared memory. */
typedef struct pn_arena_hdr {
    uint64_t magic;
    uint64_t size;
    _Atomic uint64_t freed;     /* region offset of the top freed block */
    _Atomic uint64_t nfree_calls;
    char pad_[32];
} pn_arena_hdr;

/* PN_BLOCK_HDR bytes before each block's data, in shared memory. */
typedef struct pn_block {
    uint64_t magic;
    uint64_t cap;               /* usable bytes */
    _Atomic uint32_t state;     /* PN_BLOCK_* */
    uint32_t cls;
    uint64_t arena_off;         /* region offset of its pn_arena_hdr */
    uint64_t next_freed;        /* link in the freed stack */
    uint64_t next_free;         /* owner-only: link in a free list */
    uint64_t touched;           /* owner-only: bytes the owner has mapped */
    uint64_t pad_;
} pn_block;

/* The owner's private view of one arena. */
typedef struct pn_arena {
    unsigned char *base;        /* the region mapping */
    uint64_t off;               /* region offset of the arena */
    uint64_t size;
    uint64_t bump;              /* region offset of untouched space */
    uint64_t used;              /* bytes in blocks handed out, for stats */
    uint64_t free_head[PN_ARENA_NCLASS];
} pn_arena;

/* Takes ownership of the arena at region offset `off`, forgetting every
 * block in it (a new owner: the parent at start, a worker at its start). */
void pn_arena_init(pn_arena *a, void *base, uint64_t off, uint64_t size);

/* Region offset of `n` usable bytes (64-byte aligned), or 0 when the arena
 * is full for now (blocks may be freed later). */
uint64_t pn_arena_alloc(pn_arena *a, uint64_t n);

/* Any process: releases the block whose data is at `data_off`.  1 if this
 * call freed it, 0 if it was not in use (already freed), -EINVAL if
 * `data_off` is not a block of this region. */
int pn_arena_free(void *base, uint64_t size, uint64_t data_off);

/* PN_BLOCK_* of the block at `data_off`, or -EINVAL. */
int pn_arena_block_state(void *base, uint64_t size, uint64_t data_off);

/* Owner: moves everything on the freed stack into the free lists; returns
 * how many blocks it took. */
uint64_t pn_arena_reclaim(pn_arena *a);

/* Owner: how many bytes of the block at `data_off` the owner already
 * touched (its pages are mapped here), and records that `n` are now. */
uint64_t pn_arena_touched(pn_arena *a, uint64_t data_off, uint64_t n);

/* Usable capacity of a class-rounded request of n bytes (for tests). */
uint64_t pn_arena_round(uint64_t n, uint32_t *cls);

#endif
