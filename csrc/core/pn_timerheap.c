/* 4-ary min-heap of timers (keys copied into the slots) with back-indices
 * for O(log n) removal. */
#include "core/pn_timerheap.h"

#include <errno.h>
#include <stdlib.h>

void
pn_timerheap_init(pn_timerheap *h)
{
    h->items = NULL;
    h->len = 0;
    h->cap = 0;
    h->next_seq = 0;
}

void
pn_timerheap_destroy(pn_timerheap *h)
{
    for (size_t i = 0; i < h->len; i++) {
        h->items[i].timer->index = PN_TIMER_UNQUEUED;
    }
    free(h->items);
    pn_timerheap_init(h);
}

#define ARITY 4

static inline int
earlier(const pn_timerslot *a, const pn_timerslot *b)
{
    if (a->when != b->when) {
        return a->when < b->when;
    }
    return a->seq < b->seq;
}

static inline void
place(pn_timerheap *h, size_t i, pn_timerslot s)
{
    h->items[i] = s;
    s.timer->index = i;
}

static void
sift_up(pn_timerheap *h, size_t i, pn_timerslot s)
{
    while (i > 0) {
        size_t parent = (i - 1) / ARITY;
        if (!earlier(&s, &h->items[parent])) {
            break;
        }
        place(h, i, h->items[parent]);
        i = parent;
    }
    place(h, i, s);
}

static void
sift_down(pn_timerheap *h, size_t i, pn_timerslot s)
{
    for (;;) {
        size_t first = ARITY * i + 1, best, end;
        if (first >= h->len) {
            break;
        }
        end = first + ARITY < h->len ? first + ARITY : h->len;
        best = first;
        for (size_t c = first + 1; c < end; c++) {
            if (earlier(&h->items[c], &h->items[best])) {
                best = c;
            }
        }
        if (!earlier(&h->items[best], &s)) {
            break;
        }
        place(h, i, h->items[best]);
        i = best;
    }
    place(h, i, s);
}

int
pn_timerheap_push(pn_timerheap *h, pn_timer *t)
{
    pn_timerslot s;
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        pn_timerslot *items = realloc(h->items, cap * sizeof(*items));
        if (items == NULL) {
            return -ENOMEM;
        }
        h->items = items;
        h->cap = cap;
    }
    t->seq = h->next_seq++;
    s.when = t->when;
    s.seq = t->seq;
    s.timer = t;
    h->len++;
    sift_up(h, h->len - 1, s);
    return 0;
}

void
pn_timerheap_remove(pn_timerheap *h, pn_timer *t)
{
    size_t i = t->index;
    pn_timerslot last;

    if (i == PN_TIMER_UNQUEUED) {
        return;
    }
    t->index = PN_TIMER_UNQUEUED;
    last = h->items[--h->len];
    if (i == h->len) {
        return;
    }
    /* The last timer fills the hole and moves whichever way it must. */
    if (i > 0 && earlier(&last, &h->items[(i - 1) / ARITY])) {
        sift_up(h, i, last);
    }
    else {
        sift_down(h, i, last);
    }
}

pn_timer *
pn_timerheap_pop(pn_timerheap *h)
{
    pn_timer *t = pn_timerheap_peek(h);
    if (t != NULL) {
        pn_timerheap_remove(h, t);
    }
    return t;
}

int
pn_timerheap_validate(const pn_timerheap *h)
{
    for (size_t i = 0; i < h->len; i++) {
        const pn_timerslot *s = &h->items[i];
        if (s->timer->index != i || s->when != s->timer->when
            || s->seq != s->timer->seq) {
            return -1;
        }
        if (i > 0 && earlier(s, &h->items[(i - 1) / ARITY])) {
            return -1;
        }
    }
    return 0;
}
