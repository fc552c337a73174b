/* 4-ary min-heap of timers (keys copied into the slots) with back-indices
 * for O(log n) removal. */
#include "core/pn_timerheap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

size_t
pn_timerheap_count_due(const pn_timerheap *h, double end)
{
    /* The due timers are a subtree at the root (a parent is never later
     * than its children): walk it depth first.  The stack holds at most
     * ARITY - 1 slots per level, and a heap has fewer than 64 levels. */
    size_t stack[64 * ARITY], top = 0, n = 0;

    if (h->len == 0 || !(h->items[0].when < end)) {
        return 0;
    }
    stack[top++] = 0;
    while (top > 0) {
        size_t i = stack[--top], first = ARITY * i + 1;
        n++;
        for (size_t c = first; c < first + ARITY && c < h->len; c++) {
            if (h->items[c].when < end) {
                stack[top++] = c;
            }
        }
    }
    return n;
}

static int
compare_slots(const void *a, const void *b)
{
    const pn_timerslot *x = a, *y = b;
    return earlier(x, y) ? -1 : earlier(y, x) ? 1 : 0;
}

/* A deadline as an unsigned integer that sorts as the double does (never
 * NaN here: a NaN deadline is never due). */
static inline uint64_t
when_key(double when)
{
    uint64_t u;
    if (when == 0) {
        when = 0.0;     /* -0.0 ties with 0.0 */
    }
    memcpy(&u, &when, sizeof(u));
    return (u >> 63) ? ~u : u | ((uint64_t)1 << 63);
}

/* Sorts slots by (when, seq): a byte-wise radix sort on the deadline (the
 * bytes all slots share are skipped: a batch spans a narrow range), then
 * runs of equal deadlines by seq.  -1 without memory (nothing moved). */
static int
sort_slots(pn_timerslot *a, size_t n)
{
    pn_timerslot *tmp = malloc(n * sizeof(*tmp)), *src = a, *dst = tmp, *t;
    size_t count[256];

    if (tmp == NULL) {
        return -1;
    }
    for (unsigned shift = 0; shift < 64; shift += 8) {
        size_t sum = 0;
        int constant = 0;
        memset(count, 0, sizeof(count));
        for (size_t i = 0; i < n; i++) {
            count[(when_key(src[i].when) >> shift) & 0xff]++;
        }
        for (int d = 0; d < 256; d++) {
            size_t c = count[d];
            constant |= c == n;
            count[d] = sum;
            sum += c;
        }
        if (constant) {
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            dst[count[(when_key(src[i].when) >> shift) & 0xff]++] = src[i];
        }
        t = src;
        src = dst;
        dst = t;
    }
    if (src != a) {
        memcpy(a, src, n * sizeof(*a));
    }
    free(tmp);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && a[j].when == a[i].when) {
            j++;
        }
        if (j - i > 1) {
            qsort(a + i, j - i, sizeof(*a), compare_slots);
        }
        i = j;
    }
    return 0;
}

/* Batches of at least this many, and at least half the heap, are sorted
 * out of it at once: 100k due timers popped one by one cost a cache miss
 * per heap level each, a fifth of the time of "100k timers firing" with
 * all due at once (bench loop, the 1 ms spread it had); the radix sort
 * streams through memory instead. */
#define BATCH_MIN 256

void
pn_timerheap_take_due(pn_timerheap *h, double end, size_t n,
                      void (*fn)(pn_timer *t, void *arg), void *arg)
{
    pn_timerslot *due = NULL;
    size_t kept = 0, k = 0;

    if (n >= BATCH_MIN && n >= h->len / 2) {
        due = malloc(n * sizeof(*due));
    }
    if (due == NULL) {
        /* Few (or no memory for the batch): one pop each. */
        while (n-- > 0) {
            fn(pn_timerheap_pop(h), arg);
        }
        return;
    }
    /* Split the slots, sort the due ones, heapify what stays. */
    for (size_t i = 0; i < h->len; i++) {
        if (h->items[i].when < end && k < n) {
            due[k++] = h->items[i];
        }
        else {
            h->items[kept++] = h->items[i];
        }
    }
    h->len = kept;
    for (size_t i = kept / ARITY + 1; i-- > 0;) {
        if (i < kept) {
            sift_down(h, i, h->items[i]);
        }
    }
    for (size_t i = 0; i < kept; i++) {
        h->items[i].timer->index = i;
    }
    if (sort_slots(due, k) < 0) {
        qsort(due, k, sizeof(*due), compare_slots);
    }
    for (size_t i = 0; i < k; i++) {
        due[i].timer->index = PN_TIMER_UNQUEUED;
        fn(due[i].timer, arg);
    }
    free(due);
}
