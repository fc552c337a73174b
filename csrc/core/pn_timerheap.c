/* Binary min-heap of pn_timer pointers with back-indices for O(log n)
 * removal. */
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
        h->items[i]->index = PN_TIMER_UNQUEUED;
    }
    free(h->items);
    pn_timerheap_init(h);
}

static inline int
earlier(const pn_timer *a, const pn_timer *b)
{
    if (a->when != b->when) {
        return a->when < b->when;
    }
    return a->seq < b->seq;
}

static inline void
place(pn_timerheap *h, size_t i, pn_timer *t)
{
    h->items[i] = t;
    t->index = i;
}

static void
sift_up(pn_timerheap *h, size_t i, pn_timer *t)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(t, h->items[parent])) {
            break;
        }
        place(h, i, h->items[parent]);
        i = parent;
    }
    place(h, i, t);
}

static void
sift_down(pn_timerheap *h, size_t i, pn_timer *t)
{
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->len) {
            break;
        }
        if (child + 1 < h->len
            && earlier(h->items[child + 1], h->items[child])) {
            child++;
        }
        if (!earlier(h->items[child], t)) {
            break;
        }
        place(h, i, h->items[child]);
        i = child;
    }
    place(h, i, t);
}

int
pn_timerheap_push(pn_timerheap *h, pn_timer *t)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        pn_timer **items = realloc(h->items, cap * sizeof(*items));
        if (items == NULL) {
            return -ENOMEM;
        }
        h->items = items;
        h->cap = cap;
    }
    t->seq = h->next_seq++;
    h->len++;
    sift_up(h, h->len - 1, t);
    return 0;
}

void
pn_timerheap_remove(pn_timerheap *h, pn_timer *t)
{
    size_t i = t->index;
    pn_timer *last;

    if (i == PN_TIMER_UNQUEUED) {
        return;
    }
    t->index = PN_TIMER_UNQUEUED;
    last = h->items[--h->len];
    if (i == h->len) {
        return;
    }
    /* The last timer fills the hole and moves whichever way it must. */
    if (i > 0 && earlier(last, h->items[(i - 1) / 2])) {
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
        if (h->items[i]->index != i) {
            return -1;
        }
        if (i > 0 && earlier(h->items[i], h->items[(i - 1) / 2])) {
            return -1;
        }
    }
    return 0;
}
