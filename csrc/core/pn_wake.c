/* Coalescing eventfd wake-up for call_soon_threadsafe and completions. */
#include "core/pn_wake.h"

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

int
pn_wake_open(pn_wake *w)
{
    w->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->fd < 0) {
        return -errno;
    }
    atomic_init(&w->pending, 0);
    return 0;
}

void
pn_wake_close(pn_wake *w)
{
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
}

int
pn_wake_signal(pn_wake *w)
{
    uint64_t one = 1;
    /* acq_rel: releases the caller's work to the drainer; pairs with the
     * seq_cst store of 0 in pn_wake_drain.  Only the first signaller after
     * a drain pays for the write. */
    if (atomic_exchange_explicit(&w->pending, 1, memory_order_acq_rel)) {
        return 0;
    }
    for (;;) {
        if (write(w->fd, &one, sizeof(one)) == (ssize_t)sizeof(one)) {
            return 0;
        }
        if (errno == EINTR) {
            continue;
        }
        /* EAGAIN: the counter is saturated, so the fd is readable anyway. */
        return errno == EAGAIN ? 0 : -errno;
    }
}

void
pn_wake_drain(pn_wake *w)
{
    uint64_t value;
    /* Clear the flag before reading the counter: a signal that lands after
     * this store writes again, so no wake-up falls between the two. Pairs
     * with the exchange in pn_wake_signal. */
    atomic_store_explicit(&w->pending, 0, memory_order_seq_cst);
    while (read(w->fd, &value, sizeof(value)) < 0 && errno == EINTR) {
    }
}
