/* Growable FIFO ring of pointers for the loop's ready callbacks. */
#include "core/pn_readyq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void
pn_readyq_init(pn_readyq *q)
{
    q->buf = NULL;
    q->head = 0;
    q->len = 0;
    q->cap = 0;
}

void
pn_readyq_destroy(pn_readyq *q)
{
    free(q->buf);
    pn_readyq_init(q);
}

/* Doubles the ring (at least to `need`) and unwraps it so the items start
 * at index 0. */
static int
grow(pn_readyq *q, size_t need)
{
    size_t cap = q->cap ? q->cap * 2 : 256;
    void **buf;
    while (cap < need) {
        cap *= 2;
    }
    buf = malloc(cap * sizeof(*buf));
    if (buf == NULL) {
        return -ENOMEM;
    }
    if (q->len) {
        size_t first = q->cap - q->head;
        if (first > q->len) {
            first = q->len;
        }
        memcpy(buf, q->buf + q->head, first * sizeof(*buf));
        memcpy(buf + first, q->buf, (q->len - first) * sizeof(*buf));
    }
    free(q->buf);
    q->buf = buf;
    q->head = 0;
    q->cap = cap;
    return 0;
}

int
pn_readyq_push(pn_readyq *q, void *item)
{
    if (q->len == q->cap && grow(q, q->len + 1) < 0) {
        return -ENOMEM;
    }
    q->buf[(q->head + q->len) & (q->cap - 1)] = item;
    q->len++;
    return 0;
}

int
pn_readyq_reserve(pn_readyq *q, size_t n)
{
    if (q->cap - q->len < n && grow(q, q->len + n) < 0) {
        return -ENOMEM;
    }
    return 0;
}
