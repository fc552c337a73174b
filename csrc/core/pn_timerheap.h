/* A min-heap of intrusive timers: earliest deadline first, ties in the
 * order the timers were pushed. */
#ifndef PN_TIMERHEAP_H
#define PN_TIMERHEAP_H

#include <stddef.h>
#include <stdint.h>

#define PN_TIMER_UNQUEUED SIZE_MAX

/* Embedded in whatever owns the timer (a TimerHandle): the heap stores
 * pointers to these and never allocates per timer.  `when` is in the
 * owner's clock (seconds of time.monotonic() for the loop). */
typedef struct pn_timer {
    double when;
    uint64_t seq;       /* set by push: breaks ties between equal `when` */
    size_t index;       /* slot in the heap, PN_TIMER_UNQUEUED when out */
} pn_timer;

/* A heap slot keeps a copy of its timer's key next to the pointer, so
 * sifting compares contiguous memory instead of chasing every timer (with
 * 100k timers, pops were dominated by those cache misses: bench loop,
 * "100k timers firing"). */
typedef struct pn_timerslot {
    double when;
    uint64_t seq;
    pn_timer *timer;
} pn_timerslot;

/* A 4-ary heap (half the depth of a binary one, and the four children of a
 * slot share cache lines).  The array grows geometrically, so pushes are
 * allocation-free once the heap has seen its peak size. */
typedef struct pn_timerheap {
    pn_timerslot *items;
    size_t len;
    size_t cap;
    uint64_t next_seq;
} pn_timerheap;

void pn_timerheap_init(pn_timerheap *h);

/* Frees the array; the timers themselves belong to their owners. */
void pn_timerheap_destroy(pn_timerheap *h);

static inline void
pn_timer_init(pn_timer *t, double when)
{
    t->when = when;
    t->seq = 0;
    t->index = PN_TIMER_UNQUEUED;
}

static inline int
pn_timer_queued(const pn_timer *t)
{
    return t->index != PN_TIMER_UNQUEUED;
}

static inline size_t
pn_timerheap_len(const pn_timerheap *h)
{
    return h->len;
}

/* The earliest timer, or NULL. */
static inline pn_timer *
pn_timerheap_peek(const pn_timerheap *h)
{
    return h->len ? h->items[0].timer : NULL;
}

/* The i-th timer in heap order (i < len), for traversal. */
static inline pn_timer *
pn_timerheap_at(const pn_timerheap *h, size_t i)
{
    return h->items[i].timer;
}

/* Adds an unqueued timer.  0 or -ENOMEM (the timer is then unqueued). */
int pn_timerheap_push(pn_timerheap *h, pn_timer *t);

/* Removes and returns the earliest timer, or NULL. */
pn_timer *pn_timerheap_pop(pn_timerheap *h);

/* How many timers are due: have when < end. */
size_t pn_timerheap_count_due(const pn_timerheap *h, double end);

/* Takes out every timer with when < end, n of them (count_due's answer),
 * and passes each to fn in firing order. */
void pn_timerheap_take_due(pn_timerheap *h, double end, size_t n,
                           void (*fn)(pn_timer *t, void *arg), void *arg);

/* Removes a queued timer from anywhere in the heap (O(log n)); a no-op for
 * an unqueued one. */
void pn_timerheap_remove(pn_timerheap *h, pn_timer *t);

/* Checks the heap property and every back-index; 0 when sound.  For
 * tests. */
int pn_timerheap_validate(const pn_timerheap *h);

#endif
