/* The ready queue: a growable FIFO ring of pointers, single-threaded. */
#ifndef PN_READYQ_H
#define PN_READYQ_H

#include <stddef.h>

/* Capacity is a power of two so the index wraps with a mask; the ring only
 * grows, so a loop at steady state never allocates to queue a callback.
 * Not thread-safe: the owner serialises access (the loop: the GIL). */
typedef struct pn_readyq {
    void **buf;
    size_t head;
    size_t len;
    size_t cap;
} pn_readyq;

void pn_readyq_init(pn_readyq *q);

/* Frees the ring; items are the owner's to release first. */
void pn_readyq_destroy(pn_readyq *q);

static inline size_t
pn_readyq_len(const pn_readyq *q)
{
    return q->len;
}

/* Appends at the tail.  0 or -ENOMEM (nothing queued). */
int pn_readyq_push(pn_readyq *q, void *item);

/* Makes room for n more items, so that n pushes cannot fail.  0 or
 * -ENOMEM. */
int pn_readyq_reserve(pn_readyq *q, size_t n);

/* Removes from the head; NULL when empty. */
static inline void *
pn_readyq_pop(pn_readyq *q)
{
    void *item;
    if (q->len == 0) {
        return NULL;
    }
    item = q->buf[q->head];
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    return item;
}

/* The i-th item from the head (i < len), for traversal. */
static inline void *
pn_readyq_at(const pn_readyq *q, size_t i)
{
    return q->buf[(q->head + i) & (q->cap - 1)];
}

#endif
